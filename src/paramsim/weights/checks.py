"""Checks that run on a checkpoint before anything is built from it.

Each check refuses with one line that names the file or tensor, in the order that keeps a
crafted input from costing anything: the file type before opening it, the zip directory
before torch reads records, each tensor's layout and storage before its values are touched,
declared shapes before a module is allocated, and values (NaN, Inf, negative variances)
before they reach a similarity.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec

# Batch-norm leaves besides weight/bias; num_batches_tracked is an integer counter.
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_COUNTER = "num_batches_tracked"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def show(name: object) -> str:
    """A tensor name or key fit for a one-line message: printable and at most 80 chars."""
    text = name if isinstance(name, str) and name.isprintable() else repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def show_keys(keys: Iterable[object], limit: int = 8) -> str:
    keys = list(keys)
    head = ", ".join(show(k) for k in keys[:limit])
    return head + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# files


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_regular_file(path: Path) -> None:
    """Refuse anything but a regular file: opening a FIFO or a device would block or never
    end. `os.stat` follows symlinks, so a link to /dev/zero is refused too."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ParamsimError(f"checkpoint {path} does not exist") from None
    except OSError as exc:
        raise ParamsimError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ParamsimError(f"{path} is a directory; give a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise ParamsimError(f"{path} is {kind}, not a regular file; give a checkpoint file")


def check_torch_zip(path: Path) -> None:
    """Refuse zip records that expand beyond the file: `torch.save` stores records
    uncompressed, so a deflated record (up to ~1000x larger once read) or one whose
    declared size exceeds the file is a crafted or damaged checkpoint. Non-zip files (the
    legacy format, garbage) pass through to torch, which rejects what it cannot read."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch gives its own one-line refusal
    size = path.stat().st_size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ParamsimError(
                f"{path} holds a compressed record {show(info.filename)}; torch.save never "
                "compresses, so it was refused; re-save it with torch.save"
            )
    declared = sum(info.file_size for info in infos)
    if declared > size:
        raise ParamsimError(
            f"{path} declares {declared} bytes of records in a {size}-byte file; it is damaged "
            "or crafted"
        )


# ---------------------------------------------------------------------------------------------
# tensors


def check_tensors(sd: Mapping[str, torch.Tensor]) -> None:
    """Per-tensor structure, before any value is read: names are strings, tensors are dense,
    on the CPU, floating point (except batch-norm counters), non-empty, and each element has
    storage of its own."""
    for name, t in sd.items():
        if not isinstance(name, str):
            raise ParamsimError(f"state_dict keys must be strings; got {show(name)}")
        check_tensor(name, t)


def check_tensor(name: str, t: torch.Tensor) -> None:
    """One tensor's structure (see `check_tensors`)."""
    what = f"tensor {show(name)}"
    if t.is_meta:
        raise ParamsimError(
            f"{what} is on the meta device and holds no values; save the real weights"
        )
    if t.device.type != "cpu":
        raise ParamsimError(f"{what} is on {t.device}; move it to the CPU before saving")
    if t.is_quantized:
        raise ParamsimError(
            f"{what} is quantized ({t.dtype}); save the float weights (tensor.dequantize())"
        )
    if t.layout != torch.strided:
        raise ParamsimError(
            f"{what} is sparse ({t.layout}); save the dense weights (tensor.to_dense())"
        )
    counter = name.rpartition(".")[2] == _COUNTER
    if not counter and t.dtype not in FLOAT_DTYPES:
        raise ParamsimError(
            f"{what} has dtype {t.dtype}; weights must be float16, bfloat16, float32 or float64"
        )
    if t.numel() == 0:
        raise ParamsimError(
            f"{what} has shape {tuple(t.shape)} with no values: a layer needs at least one unit"
        )
    _check_storage(what, t)


def _check_storage(what: str, t: torch.Tensor) -> None:
    """Refuse views whose elements share memory (stride 0 or overlapping strides): a few
    bytes of storage can then pose as gigabytes, which any copy or matmul would allocate.
    (torch itself refuses views that reach past their storage when it rebuilds them.)"""
    if t.is_contiguous():
        return  # the usual case: one element per storage slot
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz > 1)
    span = 1  # storage slots covered by the dims seen so far, when they do not overlap
    for st, sz in dims:
        if st < span:
            kind = "a stride-0 view" if st == 0 else "an overlapping view"
            raise ParamsimError(
                f"{what} of shape {tuple(t.shape)} is {kind} of "
                f"{t.untyped_storage().nbytes()} bytes of storage; save it with "
                "tensor.contiguous()"
            )
        span = st * sz


def check_values(sd: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN and Inf anywhere and negative batch-norm variances: any of them turns every
    similarity with this model into nan or a meaningless constant."""
    floats = {k: t for k, t in sd.items() if t.dtype in FLOAT_DTYPES}
    # A float64 sum is finite exactly when every element is (float32 and narrower values
    # cannot overflow it), and reads each tensor once without a copy; float64 tensors, which
    # could overflow it, and any failure pay for the element-wise test.
    narrow = [t.sum(dtype=torch.float64) for t in floats.values() if t.dtype != torch.float64]
    suspects = [k for k, t in floats.items() if t.dtype == torch.float64]
    if narrow and not math.isfinite(float(torch.stack(narrow).sum())):
        suspects = list(floats)
    for name in suspects:
        t = floats[name]
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if n_nan or n_inf:
            raise ParamsimError(
                f"tensor {show(name)} holds {n_nan} NaN and {n_inf} infinite values; "
                "the checkpoint is diverged or damaged, so it was refused"
            )
    for name, t in floats.items():
        if name.rpartition(".")[2] == "running_var" and bool((t < 0).any()):
            raise ParamsimError(
                f"tensor {show(name)} (a batch-norm variance) holds negative values; the "
                "checkpoint is damaged, so it was refused"
            )


def check_against_spec(sd: Mapping[str, torch.Tensor], spec: ArchSpec) -> None:
    """Stored keys and shapes must be exactly those of `spec`, checked before the module is
    built, so a claimed architecture can never allocate more than the stored tensors."""
    want = spec.param_shapes()
    unknown = [k for k in sd if k not in want]
    missing = [k for k in want if k not in sd and not k.endswith(_COUNTER)]
    wrong = [
        f"{show(k)} {tuple(sd[k].shape)} (expected {shape})"
        for k, shape in want.items()
        if k in sd and tuple(sd[k].shape) != shape
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys {show_keys(unknown)}")
    if missing:
        problems.append(f"missing keys {show_keys(missing)}")
    if wrong:
        problems.append(f"shape mismatch {'; '.join(wrong[:4])}")
    if problems:
        raise ParamsimError(
            f"state_dict does not fit architecture {spec.label}: {'; '.join(problems)}"
        )
