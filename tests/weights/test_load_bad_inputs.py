"""The loading sweep: crafted bad checkpoints are refused with one line, write nothing and
allocate nothing large, through the library and through `paramsim compare`."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.weights import load
from paramsim.weights.arch import ArchSpec

MLP = ArchSpec("mlp", (1, 4, 4), (6, 5))
HEAVY_MB = 200  # a refusal must come before any allocation of this size


def _mlp_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(MLP.build().state_dict())  # keys 1.*, 3.*, 5.*


def _bn_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)
    )
    return dict(module.state_dict())


def _pt(obj) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        torch.save(obj() if callable(obj) else obj, d / "bad.pt")
        return d / "bad.pt"

    return make


def _with(change: Callable[[dict], None], base=_mlp_sd):
    def build() -> dict:
        sd = base()
        change(sd)
        return sd

    return build


def _set(key: str, index: tuple, value: float):
    def change(sd: dict) -> None:
        sd[key] = sd[key].clone()
        sd[key][index] = value

    return change


def _safetensors(sd_fn, arch: dict | None = None) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        meta = {"arch": json.dumps(arch)} if arch is not None else None
        save_file(sd_fn(), str(d / "bad.safetensors"), meta)
        return d / "bad.safetensors"

    return make


def _fifo(name: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        os.mkfifo(d / name)
        return d / name

    return make


def _link_to_device(d: Path) -> Path:
    os.symlink("/dev/null", d / "null.pt")
    return d / "null.pt"


def _self_referencing() -> dict:
    outer: dict = {"epoch": 1}
    outer["state_dict"] = outer
    return outer


def _deeply_wrapped() -> dict:
    obj: dict = _mlp_sd()
    for _ in range(50):
        obj = {"state_dict": obj, "epoch": 1}
    return obj


def _compressed(d: Path) -> Path:
    """A torch zip whose records are deflated: a few KB that would read as megabytes."""
    torch.save({"1.weight": torch.zeros(64, 2048), "1.bias": torch.zeros(64)}, d / "z.tmp")
    with zipfile.ZipFile(d / "z.tmp") as src, zipfile.ZipFile(d / "bad.pt", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name), compress_type=zipfile.ZIP_DEFLATED)
    (d / "z.tmp").unlink()
    return d / "bad.pt"


def _stride0(d: Path) -> Path:
    """1 GB of float32 if expanded, from 24 bytes of storage."""
    big = torch.zeros(6).as_strided((2**14, 2**14), (0, 0))
    torch.save({"0.weight": big, "0.bias": torch.zeros(2**14)}, d / "bad.pt")
    return d / "bad.pt"


def _overlapping(d: Path) -> Path:
    w = torch.arange(21.0).as_strided((6, 16), (1, 1))  # 96 values, 21 stored
    torch.save({"0.weight": w, "0.bias": torch.zeros(6)}, d / "bad.pt")
    return d / "bad.pt"


def _two_batchnorms() -> dict:
    sd = {"0.weight": torch.ones(6, 16), "3.weight": torch.ones(2, 6)}
    for i in (1, 2):
        sd[f"{i}.running_mean"], sd[f"{i}.running_var"] = torch.zeros(6), torch.ones(6)
    return sd


def _deep_chain() -> dict:
    return {f"{i}.weight": torch.ones(2, 2) for i in range(65)}


def _quantized() -> dict:
    sd = _mlp_sd()
    sd["1.weight"] = torch.quantize_per_tensor(sd["1.weight"], 0.1, 0, torch.qint8)
    return sd


# (id, file maker, words the message must hold, heavy: checks peak memory)
CASES: list[tuple[str, Callable[[Path], Path], tuple[str, ...], bool]] = [
    ("nan", _pt(_with(_set("3.weight", (0, 0), float("nan")))), ("3.weight", "NaN"), False),
    (
        "inf-safetensors",
        _safetensors(_with(_set("5.bias", (1,), float("inf")))),
        ("5.bias", "infinite"),
        False,
    ),
    (
        "nan-with-arch-metadata",
        _safetensors(_with(_set("1.bias", (0,), float("nan"))), json.loads(MLP.to_json())),
        ("1.bias", "NaN"),
        False,
    ),
    (
        "bn-negative-var",
        _pt(_with(_set("2.running_var", (3,), -0.5), _bn_sd)),
        ("2.running_var", "negative"),
        False,
    ),
    (
        "bn-nan-mean",
        _pt(_with(_set("2.running_mean", (0,), float("nan")), _bn_sd)),
        ("2.running_mean", "NaN"),
        False,
    ),
    (
        "stray-2d-key-that-chains",
        _pt(_with(lambda sd: sd.update({"extra.weight": torch.ones(3, 2)}))),
        ("extra.weight", "outside its layer chain"),
        False,
    ),
    (
        "stray-root-key",
        _pt(_with(lambda sd: sd.update({"foo": torch.ones(2, 2)}))),
        ("foo", "outside its layer chain"),
        False,
    ),
    (
        "stray-key-with-newline",
        _pt(_with(lambda sd: sd.update({"evil\nkey": torch.ones(2, 2)}))),
        ("evil\\nkey",),
        False,
    ),
    (
        "stray-layer-in-other-container",
        _pt(_with(lambda sd: sd.update({"head.0.weight": torch.ones(3, 2)}))),
        ("head.0.weight",),
        False,
    ),
    ("two-batchnorms-in-a-row", _pt(_two_batchnorms), ("batch-norm 2", "directly follow"), False),
    ("stride-0", _stride0, ("0.weight", "stride-0"), True),
    ("overlapping", _overlapping, ("0.weight", "overlapping"), False),
    ("compressed-zip", _compressed, ("compressed",), False),
    (
        "arch-metadata-too-wide",
        _safetensors(_mlp_sd, {"kind": "mlp", "input_shape": [1, 4, 4], "hidden": [4000000, 32]}),
        ("hidden", "4000000", "65536"),
        True,
    ),
    (
        "arch-metadata-mismatch",
        # in bounds, but 786 MB if built: the stored tensors must be compared first
        _safetensors(_mlp_sd, {"kind": "mlp", "input_shape": [1, 4, 4], "hidden": [65536, 3000]}),
        ("does not fit", "shape mismatch", "1.weight"),
        True,
    ),
    (
        "arch-metadata-negative",
        _safetensors(_mlp_sd, {"kind": "mlp", "input_shape": [1, 4, 4], "hidden": [-3]}),
        ("metadata", "hidden"),
        False,
    ),
    ("fifo-pt", _fifo("x.pt"), ("FIFO",), False),
    ("fifo-safetensors", _fifo("x.safetensors"), ("FIFO",), False),
    ("link-to-device", _link_to_device, ("character device",), False),
    (
        "zero-size-layer",
        _pt(
            {
                "0.weight": torch.zeros(0, 16),
                "0.bias": torch.zeros(0),
                "2.weight": torch.zeros(2, 0),
            }
        ),
        ("0.weight", "no values"),
        False,
    ),
    ("self-referencing-dict", _pt(_self_referencing), ("not a state_dict",), False),
    ("deeply-wrapped", _pt(_deeply_wrapped), ("not a state_dict",), False),
    ("top-level-list", _pt([torch.zeros(2, 2)]), ("not a state_dict", "list"), False),
    ("top-level-tensor", _pt(torch.zeros(2, 2)), ("not a state_dict", "Tensor"), False),
    ("top-level-int", _pt(3), ("not a state_dict", "int"), False),
    ("non-string-keys", _pt({0: torch.zeros(2, 2)}), ("keys must be strings",), False),
    (
        "meta-device",
        _pt(_with(lambda sd: sd.update({"1.weight": torch.zeros(6, 16, device="meta")}))),
        ("1.weight", "meta"),
        False,
    ),
    ("quantized", _pt(_quantized), ("1.weight", "quantized"), False),
    (
        "sparse-coo",
        _pt(_with(lambda sd: sd.update({"1.weight": sd["1.weight"].to_sparse()}))),
        ("1.weight", "sparse"),
        False,
    ),
    (
        "sparse-csr",
        _pt(_with(lambda sd: sd.update({"3.weight": sd["3.weight"].to_sparse_csr()}))),
        ("3.weight", "sparse"),
        False,
    ),
    (
        "int-weights",
        _pt(_with(lambda sd: sd.update({"1.weight": torch.ones(6, 16, dtype=torch.int64)}))),
        ("1.weight", "int64"),
        False,
    ),
    (
        "bool-weights",
        _safetensors(_with(lambda sd: sd.update({"5.bias": torch.ones(2, dtype=torch.bool)}))),
        ("5.bias", "bool"),
        False,
    ),
    (
        "complex-weights",
        _pt(_with(lambda sd: sd.update({"3.weight": torch.ones(5, 6, dtype=torch.complex64)}))),
        ("3.weight", "complex64"),
        False,
    ),
    (
        "weight-3d",
        _pt(_with(lambda sd: sd.update({"5.weight": torch.ones(2, 5, 1)}))),
        ("5.weight", "not a linear or conv"),
        False,
    ),
    ("too-deep", _pt(_deep_chain), ("65 layers", "64"), False),
]
IDS = [c[0] for c in CASES]


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `d` with its size and mtime, without following links or opening."""
    return {str(p.relative_to(d)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.rglob("*")}


@contextmanager
def _deadline(seconds: float = 20.0) -> Iterator[None]:
    """Turn a hang (a FIFO opened for reading) into a failure instead of a stuck suite."""

    def fail(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("make, words, heavy", [c[1:] for c in CASES], ids=IDS)
def test_load_refuses_with_one_line(tmp_path: Path, make, words, heavy: bool) -> None:
    path = make(tmp_path)
    before = _snapshot(tmp_path)
    peak = _peak_mb()
    with _deadline(), pytest.raises(ParamsimError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message
    assert path.name in message  # a directory may hold thousands: say which file
    for word in words:
        assert word in message, message
    assert _snapshot(tmp_path) == before
    if heavy:
        assert _peak_mb() - peak < HEAVY_MB


@pytest.mark.parametrize("make, words, heavy", [c[1:] for c in CASES], ids=IDS)
def test_compare_cli_refuses_with_one_error_line(
    tmp_path: Path, capsys, make, words, heavy: bool
) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    path = make(bad_dir)
    good = tmp_path / "good.pt"
    torch.save(_mlp_sd(), good)
    before = _snapshot(tmp_path)
    peak = _peak_mb()
    with _deadline():
        assert main(["compare", str(path), str(good), "--method", "gram1"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert words[0] in lines[0]
    assert captured.out == ""
    assert _snapshot(tmp_path) == before
    if heavy:
        assert _peak_mb() - peak < HEAVY_MB


def test_good_files_next_to_the_bad_ones_still_load(tmp_path: Path) -> None:
    """The checks refuse only what is wrong: the unchanged state_dicts load."""
    for make in (_pt(_mlp_sd), _safetensors(_mlp_sd, json.loads(MLP.to_json())), _pt(_bn_sd)):
        net = load(make(tmp_path))
        assert net.layers[0].weight.shape[1] == 16
        (tmp_path / "bad.pt").unlink(missing_ok=True)
        (tmp_path / "bad.safetensors").unlink(missing_ok=True)


def test_crafted_quantized_size_is_refused_without_growing_memory(tmp_path: Path) -> None:
    """A quantized record whose pickle claims a 1 GiB size: torch reserves it lazily and we
    refuse the quantized tensor before anything touches it."""
    torch.save(
        {"w": torch.quantize_per_tensor(torch.rand(2, 3), 0.1, 0, torch.qint8)}, tmp_path / "q.pt"
    )
    with zipfile.ZipFile(tmp_path / "q.pt") as z:
        infos = [(i, z.read(i.filename)) for i in z.infolist()]
    size, stride = b"K\x02K\x03\x86", b"K\x03K\x01\x86"
    claim = b"J" + struct.pack("<i", 2**15) + b"J" + struct.pack("<i", 2**15) + b"\x86"
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as out:
        for info, data in infos:
            if info.filename.endswith("data.pkl"):
                assert data.count(size) == 1 and data.count(stride) == 1
                data = data.replace(size, claim).replace(stride, b"K\x00K\x00\x86")
            out.writestr(info, data)
    peak = _peak_mb()
    with pytest.raises(ParamsimError, match="quantized|stride-0"):
        load(tmp_path / "bad.pt")
    assert _peak_mb() - peak < HEAVY_MB
