"""Tiny data files in the real formats, for tests (no download, no real data)."""

import gzip
import struct

import numpy as np


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    codes = {np.dtype(np.uint8): (0x08, "u1"), np.dtype(np.int16): (0x0B, ">i2")}
    codes |= {np.dtype(np.float32): (0x0D, ">f4")}
    code, big_endian = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(big_endian).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx_dir(tmp_path, gz=False):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 256, (n, 5, 5), dtype=np.uint8),
            gz,
        )
        write_idx(
            tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 4, n, dtype=np.uint8), gz
        )
    return tmp_path
