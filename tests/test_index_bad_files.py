"""A damaged, padded, crafted or swapped index.faiss is refused in one line before faiss
allocates from it, with and without the size and sha256 that index.json records."""

from __future__ import annotations

import json
import resource
import shutil
import struct

import numpy as np
import pytest

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.index import INDEX_FILE, META_FILE, EmbeddingIndex
from paramsim.index_check import _QT_FP16, check_faiss_file, file_digest

KINDS = [("exact", "flat"), ("exact", "fp16"), ("hnsw", "flat"), ("ivf", "flat")]
N, DIM = 60, 8


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build(path, kind="exact", storage="flat", n=N, dim=DIM, seed=0):
    idx = EmbeddingIndex(dim, storage=storage, kind=kind)
    idx.add(np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32))
    return idx.save(path)


def _legacy(path) -> None:
    """Drop the recorded size and digest, as in an index built before they existed."""
    doc = json.loads((path / META_FILE).read_text())
    del doc["index_sha256"], doc["index_bytes"]
    (path / META_FILE).write_text(json.dumps(doc))


def _refused(path, match: str) -> ParamsimError:
    peak = _rss_mb()
    with pytest.raises(ParamsimError, match=match) as info:
        EmbeddingIndex.load(path)
    assert _rss_mb() - peak < 100  # a high-water mark: nothing big was allocated
    msg = str(info.value)
    assert "\n" not in msg and "rebuild" in msg
    return info.value


def _patch(path, offset: int, fmt: str, value) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, value)
    path.write_bytes(bytes(raw))


@pytest.fixture(params=[True, False], ids=["digest", "legacy"])
def digest(request) -> bool:
    return request.param


@pytest.mark.parametrize(("kind", "storage"), KINDS)
def test_a_sound_index_loads_with_and_without_its_digest(tmp_path, kind, storage, digest):
    out = _build(tmp_path / "i", kind, storage)
    doc = json.loads((out / META_FILE).read_text())
    assert doc["index_sha256"] == file_digest(out / INDEX_FILE)
    assert doc["index_bytes"] == (out / INDEX_FILE).stat().st_size
    if not digest:
        _legacy(out)
    assert len(EmbeddingIndex.load(out)) == N


@pytest.mark.parametrize(("kind", "storage"), KINDS)
def test_truncated_and_padded_files_are_refused(tmp_path, kind, storage, digest):
    out = _build(tmp_path / "i", kind, storage)
    if not digest:
        _legacy(out)
    whole = (out / INDEX_FILE).read_bytes()
    (out / INDEX_FILE).write_bytes(whole[:-5])
    _refused(out, "bytes but index.json records" if digest else "truncated")
    (out / INDEX_FILE).write_bytes(whole[: len(whole) // 2])
    _refused(out, "bytes but index.json records" if digest else "truncated")
    (out / INDEX_FILE).write_bytes(whole[:10])
    _refused(out, "bytes but index.json records" if digest else "truncated")
    (out / INDEX_FILE).write_bytes(whole + b"\0" * 64)
    _refused(out, "bytes but index.json records" if digest else "appended")


def test_a_header_declaring_a_huge_count_is_refused_before_faiss_allocates(tmp_path, digest):
    out = _build(tmp_path / "i")
    if not digest:
        _legacy(out)
    # 2**25 vectors of 8 dims: faiss would allocate 1 GiB for them before reading any
    _patch(out / INDEX_FILE, 8, "q", 1 << 25)  # ntotal, after the fourcc and d
    _patch(out / INDEX_FILE, 37, "Q", (1 << 25) * DIM)  # the vector count after the header
    _refused(out, "holds 33,554,432 vectors")  # the structure is checked first
    # the header left alone, only the inner length field lying
    _build(out)
    if not digest:
        _legacy(out)
    _patch(out / INDEX_FILE, 37, "Q", (1 << 25) * DIM)
    _refused(out, "entries, expected 480")


def test_a_lying_hnsw_graph_length_is_refused(tmp_path):
    out = _build(tmp_path / "i", "hnsw")
    _legacy(out)
    raw = (out / INDEX_FILE).read_bytes()
    pos = 37  # after the header: level probabilities (double), neighbours per level (int32)
    (count,) = struct.unpack_from("<Q", raw, pos)
    pos += 8 + 8 * count
    (count,) = struct.unpack_from("<Q", raw, pos)
    pos += 8 + 4 * count
    assert struct.unpack_from("<Q", raw, pos) == (N,)  # the per-vector levels
    _patch(out / INDEX_FILE, pos, "Q", 1 << 28)
    _refused(out, "levels holds 268435456 entries, expected 60")


def test_an_index_file_from_another_index_is_refused(tmp_path, digest):
    out = _build(tmp_path / "i")
    wide = _build(tmp_path / "wide", dim=16)
    fewer = _build(tmp_path / "fewer", n=N - 10)
    same_shape = _build(tmp_path / "same", seed=1)
    hnsw = _build(tmp_path / "hnsw", "hnsw")
    if not digest:
        _legacy(out)
    shutil.copy(wide / INDEX_FILE, out / INDEX_FILE)
    _refused(out, "bytes but index.json records" if digest else "has 16 dims")
    shutil.copy(fewer / INDEX_FILE, out / INDEX_FILE)
    _refused(out, "bytes but index.json records" if digest else "holds 50 vectors")
    shutil.copy(hnsw / INDEX_FILE, out / INDEX_FILE)
    _refused(out, "bytes but index.json records" if digest else "faiss type b'IHNf'")
    shutil.copy(same_shape / INDEX_FILE, out / INDEX_FILE)
    if digest:  # same size and structure: only the digest tells them apart
        _refused(out, "sha256 differs")
    else:
        assert len(EmbeddingIndex.load(out)) == N


def test_a_count_in_index_json_that_disagrees_is_refused(tmp_path, digest):
    out = _build(tmp_path / "i")
    if not digest:
        _legacy(out)
    doc = json.loads((out / META_FILE).read_text())
    doc["n"] = N + 1
    (out / META_FILE).write_text(json.dumps(doc))
    _refused(out, r"declared as \(60,\) int64, expected \(61,\)")
    # items and index.json agree with each other, the faiss file holds other vectors
    small = EmbeddingIndex(DIM)
    small.add(np.ones((N - 1, DIM), np.float32))
    small.save(tmp_path / "small")
    shutil.copy(tmp_path / "small" / "items.npz", out / "items.npz")
    doc["n"] = N - 1
    (out / META_FILE).write_text(json.dumps(doc))
    _refused(out, "holds 60 vectors, index.json declares 59")


def test_an_items_header_declaring_a_huge_array_is_refused(tmp_path):
    """numpy allocates what a .npy header declares: the headers are read before np.load."""
    import io
    import zipfile

    out = _build(tmp_path / "i")
    with zipfile.ZipFile(out / "items.npz") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    fake = io.BytesIO()
    header = {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)}
    np.lib.format.write_array_header_1_0(fake, header)
    members["ids.npy"] = fake.getvalue() + np.arange(N, dtype="<i8").tobytes()
    with zipfile.ZipFile(out / "items.npz", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    _refused(out, r"ids is declared as \(1099511627776,\)")


def test_absurd_declared_dims_and_settings_are_refused(tmp_path):
    out = _build(tmp_path / "i", "hnsw")
    doc = json.loads((out / META_FILE).read_text())
    for key, value, match in (
        ("dim", 1 << 40, "not a whole number from 1 to"),
        ("params", {"m": 1 << 40}, "m must be a whole number from 0 to"),
        ("params", {"ef_search": 1 << 31}, "ef_search must be a whole number from 0 to"),
    ):
        (out / META_FILE).write_text(json.dumps({**doc, key: value}))
        _refused(out, match)


def test_ivf_cells_or_fields_that_index_json_gets_wrong_are_refused(tmp_path):
    out = _build(tmp_path / "i", "ivf", n=400)
    doc = json.loads((out / META_FILE).read_text())
    assert doc["params"]["nlist"] == 10
    for params in ({**doc["params"], "nlist": 5}, {**doc["params"], "nlist": 0}, None):
        (out / META_FILE).write_text(json.dumps({**doc, "params": params}))
        _refused(out, "declares (5|0) ivf cells, index.faiss holds 10")
    (out / META_FILE).write_text(json.dumps({**doc, "storage": "fp16"}))
    assert "--fp16" not in str(_refused(out, "pairs fp16 storage with kind .ivf."))
    for field in ("params", "kind"):
        (out / META_FILE).write_text(json.dumps({k: v for k, v in doc.items() if k != field}))
        _refused(out, f"index.json lacks the field '{field}'")


def test_fp16_code_matches_faiss():
    import faiss

    assert faiss.ScalarQuantizer.QT_fp16 == _QT_FP16


def test_sparse_ivf_lists_are_walked(tmp_path):
    """faiss writes list sizes as (cell, size) pairs when most cells are empty."""
    import faiss

    x = np.random.default_rng(0).normal(size=(400, DIM)).astype(np.float32)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 20, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.min_points_per_centroid = 1
    ivf.train(x)
    ivf.add(x[:3])
    faiss.write_index(ivf, str(tmp_path / "s.faiss"))
    assert b"sprs" in (tmp_path / "s.faiss").read_bytes()
    check_faiss_file(tmp_path / "s.faiss", kind="ivf", storage="flat", dim=DIM, n=3)
    _patch(tmp_path / "s.faiss", 8, "q", 4)  # the header's count, the lists left alone
    with pytest.raises(ParamsimError, match="lists hold 3 vectors, index.json declares 4"):
        check_faiss_file(tmp_path / "s.faiss", kind="ivf", storage="flat", dim=DIM, n=4)


def test_cli_search_exits_2_with_one_error_line(tmp_path, capsys):
    out = _build(tmp_path / "i")
    (out / INDEX_FILE).write_bytes((out / INDEX_FILE).read_bytes()[:-8])
    assert main(["search", "model.safetensors", "--index", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and INDEX_FILE in err[0]
