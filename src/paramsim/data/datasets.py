"""Image classification datasets held in memory as float tensors in [0, 1].

Nothing is downloaded: the default (`digits`) ships inside scikit-learn, and IDX or CIFAR
files come from a directory the user gives.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from paramsim.errors import ParamsimError
from paramsim.stamps import files_stamp


@dataclass(frozen=True)
class Dataset:
    """Train and test images (N, C, H, W) in [0, 1] with integer labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def load_digits(test_fraction: float = 0.3, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits with a fixed stratified train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=split_seed
    )
    return Dataset(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        10,
    )


IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# deflate expands at most about 1032:1, so a gzipped file can hold no more than this many
# bytes per compressed byte: a header declaring more is damaged (or a decompression bomb)
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 24


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into an array.

    The header is read and its declared size checked against the file's size before any
    data is read, and no more than the declared data is ever decompressed."""
    gz = path.suffix == ".gz"
    opener = gzip.open if gz else open
    try:
        stored = path.stat().st_size
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise ParamsimError(f"{path} is not an IDX file (bad magic number)")
            ndim = magic[3]
            if ndim == 0:
                raise ParamsimError(f"{path} declares no dimensions: not an IDX data set")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ParamsimError(f"{path} is truncated (header incomplete)")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            limit = stored * _DEFLATE_MAX_RATIO if gz else stored - 4 - 4 * ndim
            if expected > limit:
                raise ParamsimError(
                    f"{path} declares shape {shape} ({expected} bytes), more than the file "
                    "can hold: it is truncated or damaged; download it again"
                )
            data = bytearray()
            while len(data) < expected:  # in chunks: memory grows only with real data
                chunk = f.read(min(_CHUNK, expected - len(data)))
                if not chunk:
                    break
                data += chunk
            padded = bool(f.read(1))
    except (OSError, EOFError) as exc:
        raise ParamsimError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) != expected or padded:
        found = f"{len(data)}" if not padded else f"more than {expected}"
        raise ParamsimError(
            f"{path} is truncated or padded: expected {expected} data bytes for shape "
            f"{shape}, found {found}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    # torchvision-style names use dots: train-images.idx3-ubyte
    dotted = stem.replace("-idx", ".idx")
    for candidate in (directory / dotted, directory / f"{dotted}.gz"):
        if candidate.is_file():
            return candidate
    return None


MAX_CLASSES = 10_000  # a label beyond this is a damaged file, not a class


def load_idx(directory: str | Path, name: str | None = None) -> Dataset:
    """An MNIST-format dataset: the four standard IDX files in one directory."""
    directory = Path(directory)
    expected = ", ".join(IDX_FILES.values())
    if not directory.is_dir():
        raise ParamsimError(f"data directory {directory} does not exist; it must hold {expected}")
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find(directory, stem)
        if path is None:
            raise ParamsimError(
                f"{directory} lacks {stem}[.gz]; an IDX data directory must hold {expected}"
            )
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
            raise ParamsimError(
                f"{directory}: {split} images {x.shape} and labels {y.shape} do not match; "
                "expected images (N, H, W) and labels (N,)"
            )
        if len(x) == 0:
            raise ParamsimError(f"{directory}: the {split} files hold no examples")
        if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            raise ParamsimError(
                f"{directory}: {split} images {x.shape} look like (N, H, W, channels); "
                "4-d IDX images are read as (N, channels, H, W): store them in that order"
            )
    x_tr, x_te = (_to_unit(arrays[k], directory) for k in ("x_train", "x_test"))
    y_tr, y_te = (_class_labels(arrays[k], directory) for k in ("y_train", "y_test"))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    if n_classes > MAX_CLASSES:
        raise ParamsimError(
            f"{directory}: a label reads {n_classes - 1}; classes must be numbered 0, 1, 2, ... "
            f"(at most {MAX_CLASSES} of them)"
        )
    return Dataset(name or directory.name, x_tr, y_tr, x_te, y_te, n_classes)


def _to_unit(images: np.ndarray, directory: Path) -> torch.Tensor:
    """Images in [0, 1]: bytes are scaled by 1/255; any other type must already be in range
    (an int16 scan of 0..4095 would otherwise reach the models and probes unscaled)."""
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    elif x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ParamsimError(
            f"{directory}: IDX images of type {images.dtype.name} hold values outside [0, 1] "
            f"(min {float(np.nanmin(x)):g}, max {float(np.nanmax(x)):g}); store them as "
            "unsigned bytes (0-255) or as floats in [0, 1]"
        )
    if x.ndim == 3:
        x = x[:, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def _class_labels(labels: np.ndarray, directory: Path) -> torch.Tensor:
    """Class labels as int64; a fractional or negative label is refused, never truncated."""
    y = labels.astype(np.int64)
    if labels.size and (not np.array_equal(y, labels) or y.min() < 0):
        raise ParamsimError(
            f"{directory}: IDX labels must be whole numbers >= 0 (found "
            f"{labels[(y != labels) | (y < 0)][0]!r}); store classes as 0, 1, 2, ..."
        )
    return torch.from_numpy(y)


def load_cifar(directory: str | Path, n_classes: int = 100) -> Dataset:
    """CIFAR-10 or CIFAR-100 in the standard python pickle layout.

    The pickles hold only dicts of numpy arrays and lists, so a restricted unpickler that
    refuses every class except numpy's array reconstruction is enough; nothing else runs.
    """
    directory = Path(directory)
    if n_classes == 100:
        files = {"train": ["train"], "test": ["test"]}
        label_key = b"fine_labels"
    elif n_classes == 10:
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key = b"labels"
    else:
        raise ParamsimError(f"CIFAR has 10 or 100 classes, not {n_classes}")
    expected = ", ".join(files["train"] + files["test"])
    out = {}
    for split, names in files.items():
        xs, ys = [], []
        for fname in names:
            path = directory / fname
            if not path.is_file():
                raise ParamsimError(
                    f"{directory} lacks {fname}; a CIFAR-{n_classes} directory must hold "
                    f"{expected} (the python pickle version)"
                )
            batch = _safe_unpickle(path)
            if b"data" not in batch or label_key not in batch:
                raise ParamsimError(
                    f"{path} has no {label_key.decode()}/data entries; is it CIFAR-{n_classes}?"
                )
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
            if ys[-1].ndim != 1 or len(ys[-1]) != len(xs[-1]):
                # concatenated, a count that differs would shift every later file's labels
                raise ParamsimError(
                    f"{path} holds {len(xs[-1])} images and {ys[-1].shape} labels; "
                    "expected one label per image"
                )
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    (x_tr, y_tr), (x_te, y_te) = out["train"], out["test"]
    return Dataset(
        f"cifar{n_classes}",
        _to_unit(x_tr, directory),
        torch.from_numpy(y_tr),
        _to_unit(x_te, directory),
        torch.from_numpy(y_te),
        n_classes,
    )


class _ArraysOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _safe_unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ParamsimError(f"{path} is not a valid CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise ParamsimError(f"{path} is not a valid CIFAR pickle: expected a dict")
    return obj


# Where Debian's package `dataset-fashion-mnist` installs the four gzipped IDX files: the
# Fashion-MNIST recipes read them from here when no --data-dir is given, so they run with no
# options where the package is installed, while CI (which lacks it) passes tiny files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Resolve a dataset name as used by recipes and the CLI.

    Read once per process while its files are unchanged: an eval, a transfer run and the
    LPS fits inside them all ask for the zoo's data set, and each copy of Fashion-MNIST
    costs 220 MB. Callers share the tensors, so they must not modify them in place.
    """
    directory = data_dir
    if name == "fashion-mnist" and data_dir is None:  # where Debian's package puts it
        directory = FASHION_MNIST_DIR
        if not all(_find(directory, s) for s in IDX_FILES.values()):
            raise ParamsimError(
                f"Fashion-MNIST is not in {directory}; run `apt-get install "
                "dataset-fashion-mnist` or pass --data-dir DIR holding its four IDX files"
            )
    resolved = None if directory is None else str(Path(directory).resolve())
    return _load_cached(name, resolved, files_stamp(resolved))


@lru_cache(maxsize=2)
def _load_cached(name: str, data_dir: str | None, version: tuple) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_idx(data_dir, name="fashion-mnist")  # type: ignore[arg-type]
    if data_dir is None:
        raise ParamsimError(f"dataset {name!r} needs --data-dir pointing at its files")
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_dir, int(name[5:]))
    if name == "idx":
        return load_idx(data_dir)
    raise ParamsimError(
        f"unknown dataset {name!r}; choose digits, fashion-mnist, idx, cifar10 or cifar100"
    )
