"""The faiss embedding index: cosine scores, ids and task names, atomic save/load."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.index import META_FILE, EmbeddingIndex, model_checksum


def test_search_returns_cosine_scores_and_given_ids(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32) * rng.uniform(0.5, 3, size=(50, 1))
    idx = EmbeddingIndex(8)
    idx.add(emb, ids=np.arange(100, 150), tasks=[f"t{i % 5}" for i in range(50)])
    scores, ids = idx.search(emb[7] * 10, k=3)
    assert ids[0, 0] == 107 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = np.sort(unit @ unit[7])[::-1][:3]
    np.testing.assert_allclose(scores[0], expected, atol=1e-5)
    assert idx.task_of(107) == "t2"

    idx.save(tmp_path / "idx")
    idx.save(tmp_path / "idx")  # replacing an existing index works
    back = EmbeddingIndex.load(tmp_path / "idx")
    s2, i2 = back.search(emb[7], k=3)
    np.testing.assert_array_equal(i2, ids)
    assert back.task_of(149) == "t4" and len(back) == 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_k_larger_than_index_and_bad_inputs(tmp_path):
    idx = EmbeddingIndex(4)
    idx.add(np.eye(4, dtype=np.float32))
    scores, ids = idx.search(np.ones((2, 4)), k=10)
    assert ids.shape == (2, 4)
    with pytest.raises(ParamsimError, match="dims"):
        idx.search(np.ones((1, 3)))
    with pytest.raises(ParamsimError, match="ids"):
        idx.add(np.ones((2, 4)), ids=[1])
    with pytest.raises(ParamsimError, match="not a paramsim index"):
        EmbeddingIndex.load(tmp_path)
    idx.save(tmp_path / "i")
    doc = json.loads((tmp_path / "i" / META_FILE).read_text())
    doc["format_version"] = 7
    (tmp_path / "i" / META_FILE).write_text(json.dumps(doc))
    with pytest.raises(ParamsimError, match="version 7"):
        EmbeddingIndex.load(tmp_path / "i")


def test_fp16_storage_is_exhaustive_and_close(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    exact, fp16 = EmbeddingIndex(16), EmbeddingIndex(16, storage="fp16")
    exact.add(emb)
    fp16.add(emb)
    s1, i1 = exact.search(emb[:5], k=5)
    fp16.save(tmp_path / "f")
    s2, i2 = EmbeddingIndex.load(tmp_path / "f").search(emb[:5], k=5)
    np.testing.assert_allclose(s1, s2, atol=2e-3)
    assert (i1[:, 0] == i2[:, 0]).all()
    with pytest.raises(ParamsimError, match="storage"):
        EmbeddingIndex(4, storage="pq")


def test_damaged_index_and_empty_search_are_clear(tmp_path):
    empty = EmbeddingIndex(3)
    scores, ids = empty.search(np.ones((2, 3)), k=5)
    assert scores.shape == ids.shape == (2, 0)
    idx = EmbeddingIndex(3)
    idx.add(np.eye(3, dtype=np.float32), tasks=["a", "b", "c"])
    idx.save(tmp_path / "i")
    (tmp_path / "i" / META_FILE).write_text("{not json")
    with pytest.raises(ParamsimError, match="rebuild"):
        EmbeddingIndex.load(tmp_path / "i")
    idx.save(tmp_path / "i")
    (tmp_path / "i" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ParamsimError, match="rebuild"):
        EmbeddingIndex.load(tmp_path / "i")


def _untrained_lps(directory, seed: int):
    """A saved LPS model with random weights: enough to embed, no fitting needed."""
    from paramsim.lps import LPS, LPSConfig, LPSNet

    cfg = LPSConfig(emb_dim=16, n_probes=4, rank=8)
    return LPS(cfg, net=LPSNet(cfg, seed=seed).eval()).save(directory)


def test_index_dir_has_the_usual_mode_and_never_replaces_a_users_dir(tmp_path):
    old = os.umask(0o022)
    try:
        idx = EmbeddingIndex(3)
        idx.add(np.eye(3, dtype=np.float32))
        idx.save(tmp_path / "i")
        assert stat.S_IMODE((tmp_path / "i").stat().st_mode) == 0o755
        user = tmp_path / "mine"
        user.mkdir()
        (user / "notes.txt").write_text("keep me")
        with pytest.raises(ParamsimError, match="not a paramsim index"):
            idx.save(user)
        assert (user / "notes.txt").read_text() == "keep me"
        assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
        empty = tmp_path / "empty"
        empty.mkdir()
        idx.save(empty)  # an empty directory holds nothing to lose
        assert len(EmbeddingIndex.load(empty)) == 3
    finally:
        os.umask(old)


def test_search_refuses_an_lps_model_other_than_the_one_indexed(tiny_zoo, tmp_path, capsys):
    model, other = tmp_path / "lps", tmp_path / "other"
    _untrained_lps(model, seed=0)
    _untrained_lps(other, seed=1)
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_zoo), "--model", str(model), "--out", str(out)]) == 0
    assert EmbeddingIndex.load(out).meta["model_sha256"] == model_checksum(model)
    capsys.readouterr()
    assert main(["search", f"{tiny_zoo}:1", "--index", str(out), "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["1", "1"]
    # an explicitly named other model, and the indexed model replaced in place
    assert main(["search", f"{tiny_zoo}:1", "--index", str(out), "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the one this index was built with" in err[0]
    _untrained_lps(model, seed=2)
    assert main(["search", f"{tiny_zoo}:1", "--index", str(out)]) == 2
    assert "checksum differs" in capsys.readouterr().err


def _clustered(n: int, dim: int, n_centres: int, seed: int) -> np.ndarray:
    """Unit vectors around a few centres: the shape of real embeddings (models of one task
    sit together), on which an approximate index should find nearly every true neighbour."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    x = centres[rng.integers(0, n_centres, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_find_the_exact_neighbours_and_survive_save(kind, tmp_path):
    x = _clustered(3000, 16, 30, seed=0)
    q = _clustered(50, 16, 30, seed=0)[:50] + 0.01
    exact, approx = EmbeddingIndex(16), EmbeddingIndex(16, kind=kind)
    exact.add(x)
    approx.add(x)
    _, truth = exact.search(q, 10)
    s1, found = approx.search(q, 10)
    assert _recall(found, truth) >= 0.9
    assert np.all(np.diff(s1, axis=1) <= 1e-6)  # best first
    approx.save(tmp_path / "a")
    back = EmbeddingIndex.load(tmp_path / "a")
    assert back.kind == kind and back.params == approx.params
    np.testing.assert_array_equal(back.search(q, 10)[1], found)
    # less effort finds fewer neighbours: the setting reaches faiss
    low = {"ef_search": 1} if kind == "hnsw" else {"nprobe": 1}
    assert _recall(approx.search(q, 10, **low)[1], truth) < _recall(found, truth)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
@pytest.mark.parametrize("through_selector", [False, True])
def test_filters_return_the_best_models_that_pass(kind, through_selector, monkeypatch):
    import paramsim.index as index_mod

    if through_selector:  # a large filtered set goes through a faiss ID selector
        monkeypatch.setattr(index_mod, "EXACT_SUBSET", 10)
    n = 2000
    x = _clustered(n, 16, 20, seed=1)
    rng = np.random.default_rng(2)
    tasks = [f"{i % 4} vs {i % 4 + 1}" for i in range(n)]
    archs = ["mlp 64-8-2" if i % 3 else "cnn 1-4-2" for i in range(n)]
    accs = rng.uniform(0.5, 1.0, n)
    accs[::7] = np.nan  # unknown accuracy never passes --min-acc
    idx = EmbeddingIndex(16, kind=kind)
    idx.add(x, np.arange(n) + 1000, tasks=tasks, archs=archs, accs=accs)
    q = x[:5] + 0.05
    ok = (
        np.array([t in ("1 vs 2", "3 vs 4") for t in tasks]) & (np.array(archs) != "cnn 1-4-2")
    ) & (accs >= 0.8)
    unit_q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = np.where(ok, unit_q @ x.T, -np.inf)
    truth = np.argsort(-sims, axis=1)[:, :10] + 1000
    scores, found = idx.search(q, 10, tasks=["1 vs 2", "3 vs 4"], archs=["mlp"], min_acc=0.8)
    assert np.isin(found, np.flatnonzero(ok) + 1000).all()  # nothing that fails a filter
    assert _recall(found, truth) >= (1.0 if kind == "exact" else 0.9)
    if kind == "exact":
        np.testing.assert_allclose(
            scores, np.take_along_axis(sims, truth - 1000, axis=1), atol=1e-5
        )
    assert len(idx.select(archs=["mlp 64-8-2"])) == sum(a == "mlp 64-8-2" for a in archs)
    with pytest.raises(ParamsimError, match="no stored model has task '9 vs 9'"):
        idx.search(q, 3, tasks=["9 vs 9"])
    with pytest.raises(ParamsimError, match="architecture 'resnet'"):
        idx.search(q, 3, archs=["resnet"])
    s, i = idx.search(q, 3, min_acc=1.5)  # nothing passes: an empty answer, not padding
    assert i.shape == (5, 0)


def test_cli_index_kinds_and_filters(tiny_zoo, tmp_path, capsys):
    model = tmp_path / "lps"
    _untrained_lps(model, seed=0)
    out = tmp_path / "idx"
    args = ["index", "build", str(tiny_zoo), "--model", str(model), "--out", str(out), "-q"]
    assert main([*args, "--kind", "hnsw", "--chunk-size", "4"]) == 0
    assert not (tmp_path / ".idx.parts").exists()  # parts merged and removed
    idx = EmbeddingIndex.load(out)
    assert idx.kind == "hnsw" and len(idx) == 9
    assert idx.arch_of(0).startswith("mlp 64-") and 0.5 <= idx.acc[0] <= 1
    capsys.readouterr()
    assert main(["search", f"{tiny_zoo}:0", "--index", str(out), "-k", "2"]) == 0  # via faiss
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["1", "0"]
    assert main(["search", f"{tiny_zoo}:0", "--index", str(out), "--task", "3 vs 4"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 3 and all(r.endswith("3 vs 4") for r in rows)
    assert main(["search", f"{tiny_zoo}:0", "--index", str(out), "--min-acc", "1.01"]) == 2
    assert main(["search", f"{tiny_zoo}:0", "--index", str(out), "--task", "7 vs 8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error:") for e in err)
    assert main(["search", f"{tiny_zoo}:0", "--index", str(out), "--arch", "cnn"]) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert main([*args[:-3], "--out", str(mine)]) == 2
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
    assert not (tmp_path / ".mine.parts").exists()  # refused before any work


def test_search_with_params_survives_faiss_torch_utils(tmp_path):
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps faiss's
    `search` for one without `params`; filtered searches must still work after that."""
    import faiss.contrib.torch_utils  # noqa: F401

    from paramsim.index import EmbeddingIndex

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    idx = EmbeddingIndex(8)
    idx.add(emb, ids=list(range(40)), tasks=["a" if i % 2 else "b" for i in range(40)])
    scores, ids = idx.search(emb[:2], k=3)
    assert ids[0, 0] == 0 and ids[1, 0] == 1


def test_tuned_and_selector_searches_survive_faiss_torch_utils(monkeypatch):
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps Index.search
    for a wrapper that takes no search parameters; filters and efforts must still work."""
    import faiss.contrib.torch_utils  # noqa: F401

    import paramsim.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET", 10)  # the filter goes through faiss
    x = _clustered(500, 8, 5, seed=3)
    idx = EmbeddingIndex(8, kind="hnsw")
    idx.add(x, tasks=["a" if i % 2 else "b" for i in range(500)])
    assert idx.search(x[:3], 5, ef_search=8)[1].shape == (3, 5)
    _, ids = idx.search(x[:3], 5, tasks=["a"])
    assert ids.shape == (3, 5) and (ids % 2 == 1).all()


def test_task_filter_finds_both_side_orders():
    """--task matches a task whatever side order names it: "0 vs 1" and "1 vs 0" are one
    task (`task_key`), and an index may hold zoos that name it either way."""
    x = np.eye(4, dtype=np.float32)
    idx = EmbeddingIndex(4)
    idx.add(x, [10, 11, 12, 13], tasks=["0 vs 1", "1 vs 0", "2 vs 3", "5+7 vs 1+2"])
    for name in ("0 vs 1", "1 vs 0"):
        _, ids = idx.search(x[:1], 10, tasks=[name])
        assert sorted(ids[0].tolist()) == [10, 11], name
    _, ids = idx.search(x[:1], 10, tasks=["2+1 vs 7+5"])
    assert ids[0].tolist() == [13]
