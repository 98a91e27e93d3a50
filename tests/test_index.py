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
