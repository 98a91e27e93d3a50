"""fit -> embed -> index build -> search on the session's tiny zoo."""

from __future__ import annotations

import numpy as np
import pytest

from paramsim.cli import main


def test_fit_embed_index_search(tiny_zoo, tmp_path, capsys):
    model = tmp_path / "lps"
    assert main(["fit", str(tiny_zoo), "--out", str(model), "--epochs", "2", "--quiet"]) == 0
    assert "saved" in capsys.readouterr().out
    out = tmp_path / "e.npy"
    assert (
        main(["embed", str(tiny_zoo), f"{tiny_zoo}:4", "--model", str(model), "--out", str(out)])
        == 0
    )
    emb = np.load(out)
    assert emb.shape == (10, 256)  # weight and function parts, 128 each
    np.testing.assert_allclose(emb[4], emb[9], atol=1e-5)  # ZOO:4 is model 4 again
    idx = tmp_path / "idx"
    assert main(["index", "build", str(tiny_zoo), "--model", str(model), "--out", str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", f"{tiny_zoo}:4", "--index", str(idx), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query") and "0 vs 2" in lines[0]
    first = lines[2].split()
    assert first[:3] == ["1", "4", "1.0000"]
    assert len(lines) == 5

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["zoo", "export", str(tiny_zoo), "0", "--out", str(a)]) == 0
    assert main(["zoo", "export", str(tiny_zoo), "8", "--out", str(b)]) == 0
    capsys.readouterr()
    args = ["compare", str(a), str(b), "--model", str(model), "--zoo", str(tiny_zoo)]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    # the printed score is the cosine of the two models' embeddings (zoo models 0 and 8)
    assert float(out[0]) == pytest.approx(float(emb[0] @ emb[8]), abs=5e-5)
    assert out[1].startswith("nearest tasks to") and out[1].split(": ", 1)[1].startswith("0 vs 1")


def test_fit_progress_shows_no_nan_for_the_untrained_epoch(tiny_zoo, tmp_path, capsys):
    assert main(["fit", str(tiny_zoo), "--out", str(tmp_path / "m"), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "loss=-" in err and "val_map=" in err  # epoch 0: scored, not yet trained
    assert "nan" not in err.lower()


def test_clear_errors(tiny_zoo, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "nope"), "--model", str(tmp_path), "--out", "x.npy"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["fit", str(tiny_zoo), "--out", str(tmp_path / "m"), "--variant", "nope"]) == 2
    assert "unknown LPS method" in capsys.readouterr().err
