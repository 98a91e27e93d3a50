"""Check an index.faiss file against its index.json before faiss reads it.

faiss trusts the lengths written inside its files: a truncated, padded or crafted file can
make it allocate gigabytes (or abort) before anything else looks at it. So, before faiss
sees the bytes, the file is checked against what index.json declares:

* its size and sha256, when index.json records them (every index built since they were added);
* always, its structure: each faiss type code, dimension and vector count, and every length
  field faiss will allocate from, walked in the order faiss reads them (the layout of
  faiss/impl/index_read.cpp for the four index types paramsim writes), each one bounded by
  the bytes actually left in the file, and nothing left over at the end.

A file that passes can make faiss allocate no more than about its own size, and the size is
capped by the machine's memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO

from paramsim.errors import ParamsimError

# fourcc, d (int32), ntotal (int64), two unused int64, is_trained (bool), metric (int32)
_HEADER = struct.Struct("<4siqqq?i")
_METRIC_INNER_PRODUCT = 0
_QT_FP16 = 4  # faiss::ScalarQuantizer::QT_fp16 (checked against faiss in the tests)
_DIRECT_MAP_HASHTABLE = 2
_META = "index.json"
# faiss's 4-character type code for each kind of index paramsim writes (index_write.cpp)
_FOURCC_BY_KIND = {
    ("exact", "flat"): b"IxFI",
    ("exact", "fp16"): b"IxSQ",
    ("hnsw", "flat"): b"IHNf",
    ("ivf", "flat"): b"IwFl",
}


class _Bad(Exception):
    """The file disagrees with what index.json declares (the message says how)."""


def file_digest(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (bounded memory for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def memory_bytes() -> int:
    """This machine's physical memory: faiss holds a whole index in memory, so a file larger
    than this cannot be loaded whatever it declares."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


class _Cursor:
    """Reads a faiss file front to back, refusing any length beyond the bytes left."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise _Bad(f"it ends inside the {what} (truncated)")
        self.left -= n
        return self.f.read(n)

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def vector(self, itemsize: int, what: str, want: int | None = None, keep: bool = False):
        """A faiss vector: a uint64 count then the items. Returns the count (or the raw
        bytes with `keep`); the count must fit in the file, and equal `want` if given."""
        (count,) = self.unpack("Q", what)
        if want is not None and count != want:
            raise _Bad(f"its {what} holds {count} entries, expected {want}")
        if count * itemsize > self.left:
            raise _Bad(f"its {what} declares {count:,} entries, more than the file holds")
        if keep:
            return self.take(count * itemsize, what)
        self.f.seek(count * itemsize, os.SEEK_CUR)
        self.left -= count * itemsize
        return count

    def header(self, fourcc: bytes, dim: int, n: int | None, what: str) -> int:
        """faiss's index header (read_index_header); returns ntotal."""
        code, d, ntotal, _, _, _, metric = self.unpack(_HEADER.format[1:], f"{what} header")
        if code != fourcc:
            raise _Bad(f"its {what} is faiss type {code!r}, expected {fourcc!r}")
        if d != dim:
            raise _Bad(f"its {what} has {d} dims, {_META} declares {dim}")
        if n is not None and ntotal != n:
            raise _Bad(f"its {what} holds {ntotal:,} vectors, {_META} declares {n}")
        if ntotal < 0:
            raise _Bad(f"its {what} declares {ntotal} vectors")
        if metric != _METRIC_INNER_PRODUCT:
            raise _Bad(f"its {what} uses faiss metric {metric}, not inner product")
        return ntotal

    def flat(self, dim: int, n: int | None, what: str) -> int:
        """IndexFlatIP: header, then the float32 vectors (a count of 4-byte units)."""
        ntotal = self.header(b"IxFI", dim, n, what)
        self.vector(4, f"{what} vectors", want=ntotal * dim)
        return ntotal


def _walk(c: _Cursor, kind: str, storage: str, dim: int, n: int) -> None:
    if kind == "exact" and storage == "flat":
        c.flat(dim, n, "index")
    elif kind == "exact":  # IndexScalarQuantizer, fp16
        c.header(b"IxSQ", dim, n, "index")
        qtype, _, _, sq_d, code_size = c.unpack("iifQQ", "quantizer")
        if qtype != _QT_FP16 or sq_d != dim or code_size != 2 * dim:
            raise _Bad("its quantizer is not fp16 over the declared dims")
        c.vector(4, "quantizer table", want=0)
        c.vector(1, "codes", want=n * code_size)
    elif kind == "hnsw":  # IndexHNSWFlat: header, the graph, then a flat storage index
        c.header(b"IHNf", dim, n, "index")
        c.vector(8, "level probabilities")
        c.vector(4, "neighbours per level")
        c.vector(4, "levels", want=n)
        c.vector(8, "graph offsets", want=n + 1)
        c.vector(4, "graph links")
        c.unpack("iiiii", "graph settings")
        c.flat(dim, n, "storage")
    else:  # IndexIVFFlat: header, cells, centroids, direct map, inverted lists
        c.header(b"IwFl", dim, n, "index")
        nlist, _ = c.unpack("QQ", "cell count")
        c.flat(dim, None, "centroids")
        (map_type,) = c.unpack("b", "direct map")
        c.vector(8, "direct map")
        if map_type == _DIRECT_MAP_HASHTABLE:
            c.vector(16, "direct map table")
        (lists,) = c.unpack("4s", "inverted lists")
        if lists != b"ilar":
            raise _Bad(f"its inverted lists are of faiss type {lists!r}, expected b'ilar'")
        lists_n, code_size = c.unpack("QQ", "inverted lists")
        if lists_n != nlist or code_size != 4 * dim:
            raise _Bad("its inverted lists disagree with its cells or dims")
        (list_type,) = c.unpack("4s", "list sizes")
        import numpy as np

        if list_type == b"full":
            sizes = np.frombuffer(c.vector(8, "list sizes", want=nlist, keep=True), "<u8")
        elif list_type == b"sprs":  # (cell, size) pairs for the non-empty cells
            pairs = np.frombuffer(c.vector(8, "list sizes", keep=True), "<u8")
            if len(pairs) % 2 or (pairs[::2] >= nlist).any():
                raise _Bad("its sparse list sizes name cells that do not exist")
            sizes = pairs[1::2]
        else:
            raise _Bad(f"its list sizes are of faiss type {list_type!r}")
        if (sizes > n).any() or int(sizes.sum(dtype=np.uint64)) != n:
            raise _Bad(f"its lists hold {int(sizes.sum()):,} vectors, {_META} declares {n}")
        c.take(n * (code_size + 8), "list contents")
    if c.left:
        raise _Bad(f"{c.left:,} bytes follow the end of the index (appended data)")


def check_faiss_file(
    path: str | Path,
    *,
    kind: str,
    storage: str,
    dim: int,
    n: int,
    sha256: str | None = None,
    size: int | None = None,
) -> None:
    """Refuse `path` unless it is the faiss index that index.json describes (see the module
    docstring); raises a one-line ParamsimError naming the problem and the fix."""
    path = Path(path)
    fix = "rebuild the index with `paramsim index build`"
    actual = path.stat().st_size
    cap = memory_bytes()
    if actual > cap:
        raise ParamsimError(
            f"{path} is {actual:,} bytes, more than this machine's {cap:,} bytes of memory; "
            "search it on a larger machine, or rebuild a smaller index"
        )
    if size is not None and actual != size:
        raise ParamsimError(
            f"{path} is {actual:,} bytes but {_META} records {size:,} (truncated, padded or "
            f"replaced); {fix}"
        )
    fourcc = _FOURCC_BY_KIND.get((kind, storage))
    if fourcc is None:
        raise ParamsimError(f"{_META} declares an unknown index kind {kind}/{storage}; {fix}")
    try:
        with open(path, "rb") as f:
            _walk(_Cursor(f, actual), kind, storage, dim, n)
    except _Bad as exc:
        raise ParamsimError(f"{path} does not match {_META}: {exc}; {fix}") from None
    if sha256 is not None and file_digest(path) != sha256:
        raise ParamsimError(
            f"{path} is not the file this index was built with (sha256 differs from {_META}); {fix}"
        )


def check_items_file(path: str | Path, keys: tuple[str, ...], n: int) -> None:
    """Raise ValueError unless every array in the items.npz at `path` is declared as `n`
    plain values that its stored bytes can hold: numpy allocates what a .npy header declares
    before reading, so the headers are read first."""
    import zipfile

    import numpy as np

    if n < 0:
        raise ValueError(f"index.json declares {n} models")
    try:
        with zipfile.ZipFile(path) as zf:
            for key in keys:
                info = zf.getinfo(f"{key}.npy")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"{key} has .npy version {version}")
                if dtype.hasobject or shape != (n,) or dtype.itemsize * n > info.file_size:
                    raise ValueError(f"{key} is declared as {shape} {dtype}, expected ({n},)")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"items.npz is not readable ({exc})") from None
