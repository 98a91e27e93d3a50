"""`index build --nlist` and `search --exact` from the command line."""

from __future__ import annotations

from paramsim.cli import main
from paramsim.index import EmbeddingIndex


def test_cli_search_exact_and_nlist(tiny_zoo, lps_model, tmp_path, capsys):
    ivf, flat, hnsw = tmp_path / "ivf", tmp_path / "flat", tmp_path / "hnsw"
    base = ["index", "build", str(tiny_zoo), "--model", str(lps_model), "-q"]
    assert main([*base, "--out", str(ivf), "--kind", "ivf", "--nlist", "3"]) == 0
    assert EmbeddingIndex.load(ivf).params["nlist"] == 1  # at most one cell per 39 models
    assert "--nlist 3 lowered to 1 cells" in capsys.readouterr().err
    assert main([*base, "--out", str(flat)]) == 0
    assert main([*base, "--out", str(hnsw), "--kind", "hnsw"]) == 0
    capsys.readouterr()
    assert main(["search", str(tiny_zoo), "--index", str(flat), "-k", "4"]) == 0
    want = capsys.readouterr().out
    assert main(["search", str(tiny_zoo), "--index", str(ivf), "-k", "4", "--exact"]) == 0
    out, err = capsys.readouterr()
    assert out == want
    assert "note: --exact read 100% of the stored vectors" in err  # one cell: all of them
    assert main(["search", str(tiny_zoo), "--index", str(hnsw), "--exact"]) == 2
    assert "cannot search exactly" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--nlist", "8"]) == 2
    assert "--nlist" in capsys.readouterr().err and not (tmp_path / "x").exists()
    fp16_ivf = [*base, "--out", str(tmp_path / "y"), "--kind", "ivf", "--fp16"]
    assert main(fp16_ivf) == 2
    assert "--fp16 is for --kind exact" in capsys.readouterr().err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".y")]  # no work done


def test_cli_search_passes_nprobe_and_ef_to_the_index_it_fits(
    tiny_zoo, lps_model, tmp_path, capsys, monkeypatch
):
    ivf, hnsw = tmp_path / "ivf", tmp_path / "hnsw"
    base = ["index", "build", str(tiny_zoo), "--model", str(lps_model), "-q"]
    assert main([*base, "--out", str(ivf), "--kind", "ivf"]) == 0
    assert main([*base, "--out", str(hnsw), "--kind", "hnsw"]) == 0
    seen = []
    real = EmbeddingIndex.search

    def recording(self, queries, k=10, **kw):
        seen.append((self.kind, kw.get("nprobe"), kw.get("ef_search")))
        return real(self, queries, k, **kw)

    monkeypatch.setattr(EmbeddingIndex, "search", recording)
    capsys.readouterr()
    assert main(["search", f"{tiny_zoo}:0", "--index", str(ivf), "--nprobe", "3"]) == 0
    assert main(["search", f"{tiny_zoo}:0", "--index", str(hnsw), "--ef", "7"]) == 0
    assert main(["search", f"{tiny_zoo}:0", "--index", str(ivf)]) == 0
    assert seen == [("ivf", 3, None), ("hnsw", None, 7), ("ivf", None, None)]
    capsys.readouterr()
    assert main(["search", f"{tiny_zoo}:0", "--index", str(hnsw), "--nprobe", "3"]) == 2
    assert "--nprobe is for an ivf index" in capsys.readouterr().err
    assert main(["search", f"{tiny_zoo}:0", "--index", str(ivf), "--ef", "3"]) == 2
    assert "--ef is for an hnsw index" in capsys.readouterr().err
    assert len(seen) == 3  # refused before any search
