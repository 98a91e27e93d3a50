"""Read checkpoints (files, state_dicts, modules) into the canonical `Network` form.

Files are read without running any code: `.safetensors` through safetensors, `.pt`/`.pth`
only through `torch.load(weights_only=True)`, which refuses pickles that carry code. A
state_dict says nothing about pooling or padding, so CNN state_dicts need an `ArchSpec`;
MLP state_dicts are understood from their key order and shapes alone.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec
from paramsim.weights.network import Layer, Network

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Wrapper keys used by common training scripts around the actual state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Modules that are the identity in eval mode.
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def load(
    source: str | Path | Mapping[str, Any] | nn.Module | Network,
    spec: ArchSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Network:
    """Any supported checkpoint as a `Network`.

    `source` is a path (.safetensors, .pt, .pth), a state_dict (possibly wrapped as
    `{"state_dict": ...}`), an `nn.Module` or a `Network`. `spec` describes the architecture
    (needed for CNN state_dicts); a safetensors file whose metadata holds an `arch` or `spec`
    JSON entry supplies it itself.
    """
    if isinstance(source, Network):
        return source
    if isinstance(source, nn.Module):
        shape = input_shape or (spec.input_shape if spec else None)
        return from_module(source, shape)
    if isinstance(source, (str, Path)):
        sd, file_spec = _read_file(Path(source))
        return from_state_dict(sd, spec or file_spec, input_shape)
    if isinstance(source, Mapping):
        return from_state_dict(_unwrap(source, "the given mapping"), spec, input_shape)
    raise ParamsimError(
        f"cannot load a {type(source).__name__}; give a checkpoint path, a state_dict, "
        "an nn.Module or a Network"
    )


# ---------------------------------------------------------------------------------------------
# files


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], ArchSpec | None]:
    if not path.exists():
        raise ParamsimError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ParamsimError(f"{path} is a directory; give a checkpoint file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _unwrap(_read_torch(path), str(path)), None
    raise ParamsimError(
        f"{path}: unknown checkpoint suffix {suffix!r}; use .safetensors, .pt or .pth"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ArchSpec | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            # safetensors lists keys sorted as strings ("10.weight" before "2.weight"); the
            # layer chain of a spec-less MLP is read in key order, so restore numeric order.
            keys = sorted(f.keys(), key=_natural_key)
            sd = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise ParamsimError(
            f"{path} is not a readable safetensors file ({exc}); is it truncated?"
        ) from exc
    spec = None
    text = meta.get("arch") or meta.get("spec")
    if text:
        try:
            spec = ArchSpec.from_json(text)
        except (ParamsimError, ValueError):
            spec = None  # metadata from another tool; the caller may still pass a spec
    return sd, spec


def _natural_key(key: str) -> list[str | int]:
    """Sort key that orders digit runs as numbers: 'layers.2' before 'layers.10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # protocol notices are noise next to our own errors
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "WeightsUnpickler" in text:
            raise ParamsimError(
                f"{path} holds Python objects or code beyond tensors, so it was refused and "
                f"nothing was run ({_refusal(text)}); re-save it as a plain state_dict or as "
                ".safetensors"
            ) from exc
        raise ParamsimError(f"{path} is not a PyTorch checkpoint ({_short(exc)})") from exc
    except Exception as exc:  # torch raises many types on damaged files (KeyError, ...)
        raise ParamsimError(
            f"{path} is not a readable PyTorch checkpoint ({_short(exc)}); is it truncated?"
        ) from exc


def _refusal(text: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice to disable it."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return f"refused global {m.group(1)}"
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return m.group(1).strip().rstrip(".") if m else "refused by the weights-only unpickler"


def _short(exc: BaseException) -> str:
    """The informative part of a multi-line torch error, on one line."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    keep = [
        line
        for line in lines
        if line.startswith(("Missing key", "Unexpected key")) or "size mismatch" in line
    ]
    text = "; ".join(keep) if keep else (lines[0].split(". ")[0] if lines else "")
    if len(text) < 12:  # bare KeyError / EOFError messages say nothing on their own
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state_dict inside `obj`, looking through `{"state_dict": ...}` style wrappers."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return _unwrap(inner, where)
    raise ParamsimError(
        f"{where} is not a state_dict (a mapping of names to tensors, or one wrapped under "
        f"{'/'.join(WRAPPER_KEYS)}); got {_describe(obj)}"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a mapping with keys {keys}" if obj else "an empty mapping"
    return f"a {type(obj).__name__}"


# ---------------------------------------------------------------------------------------------
# state_dicts


def from_state_dict(
    sd: Mapping[str, torch.Tensor],
    spec: ArchSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Network:
    """A state_dict as a `Network`.

    With `spec`, the tensors load strictly into `spec.build()`. Without, the state_dict must
    be an MLP of Linear[-BatchNorm1d] layers in key order with ReLU between them (the only
    non-linearity the canonical form knows); shapes must chain.
    """
    sd = _unwrap(sd, "the state_dict")
    if spec is not None:
        module = spec.build()
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ParamsimError(
                f"state_dict does not fit architecture {spec.label}: {_short(exc)}"
            ) from exc
        return from_module(module.eval(), input_shape or spec.input_shape)
    return _infer_mlp(sd, input_shape)


def _infer_mlp(sd: Mapping[str, torch.Tensor], input_shape: tuple[int, int, int] | None) -> Network:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value
    layers: list[Layer] = []
    has_conv = False
    for prefix, g in groups.items():
        name = prefix or "<root>"
        if "running_mean" in g:  # batch-norm: fold into the layer before
            if not layers:
                raise ParamsimError(f"batch-norm {name} comes before any layer; cannot fold")
            if g["running_mean"].numel() != layers[-1].units:
                raise ParamsimError(
                    f"batch-norm {name} has {g['running_mean'].numel()} features but the "
                    f"layer before it has {layers[-1].units} units"
                )
            layers[-1] = _fold_bn(layers[-1], g, name)
            continue
        w = g.get("weight")
        if w is None:
            raise ParamsimError(f"cannot place parameters {sorted(g)} of {name} in a layer chain")
        unknown = set(g) - {"weight", "bias"}
        if unknown:
            raise ParamsimError(f"{name} has unsupported parameters {sorted(unknown)}")
        if w.dim() == 4:
            has_conv = True
            prev = layers[-1].units if layers else None
            if prev is not None and w.shape[1] != prev:
                raise ParamsimError(
                    f"shapes do not chain at {name}: convolution reads {w.shape[1]} channels "
                    f"but the layer before has {prev}"
                )
        elif w.dim() == 2:
            prev = layers[-1].units if layers else None
            if prev is not None and w.shape[1] != prev and not has_conv:
                raise ParamsimError(
                    f"shapes do not chain at {name}: weight {tuple(w.shape)} reads "
                    f"{w.shape[1]} inputs but the layer before has {prev} units"
                )
        else:
            raise ParamsimError(f"{name}.weight has shape {tuple(w.shape)}; not a layer")
        b = g.get("bias")
        if b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype)
        if b.shape != (w.shape[0],):
            raise ParamsimError(f"{name}.bias has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        kind = "conv" if w.dim() == 4 else "linear"
        layers.append(Layer(kind, w.detach().float(), b.detach().float()))
    if not layers:
        raise ParamsimError("the state_dict holds no layer weights")
    if has_conv:
        raise ParamsimError(
            "this state_dict holds convolutions; padding and pooling are not stored in a "
            "state_dict, so pass its architecture (spec=ArchSpec(...), CLI: --spec JSON)"
        )
    layers = [
        Layer(lay.kind, lay.weight, lay.bias, 0, ("relu",) if i < len(layers) - 1 else ())
        for i, lay in enumerate(layers)
    ]
    shape = input_shape or _guess_shape(layers[0].weight.shape[1])
    _check_in_features(shape, layers[0].weight.shape[1])
    return Network(tuple(layers), shape, ("flatten",))


def _guess_shape(n: int) -> tuple[int, int, int]:
    """(1, s, s) when `n` is a square (images are the common case), else (1, 1, n)."""
    s = math.isqrt(n)
    return (1, s, s) if s * s == n else (1, 1, n)


def _check_in_features(shape: tuple[int, int, int], n: int) -> None:
    if math.prod(shape) != n:
        raise ParamsimError(f"input_shape {shape} has {math.prod(shape)} values; layer 1 reads {n}")


def _fold_bn(layer: Layer, g: Mapping[str, torch.Tensor], name: str) -> Layer:
    """Eval-mode batch-norm y = (x - mean) / sqrt(var + eps) * gamma + beta, merged into `layer`."""
    mean, var = g.get("running_mean"), g.get("running_var")
    if mean is None or var is None:
        raise ParamsimError(f"batch-norm {name} has no running statistics; cannot fold it")
    eps = float(g["eps"]) if "eps" in g else 1e-5
    gamma = g.get("weight", torch.ones_like(mean))
    beta = g.get("bias", torch.zeros_like(mean))
    scale = (gamma / torch.sqrt(var + eps)).float()
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    weight = layer.weight * scale.reshape(shape)
    bias = (layer.bias - mean.float()) * scale + beta.float()
    return Layer(layer.kind, weight, bias, layer.padding, layer.post)


# ---------------------------------------------------------------------------------------------
# modules


def from_module(module: nn.Module, input_shape: tuple[int, int, int] | None = None) -> Network:
    """An `nn.Module` whose leaves run in registration order, as a `Network`.

    Supported leaves: Linear, Conv2d (stride 1, groups 1, dilation 1, square kernel, zero
    padding), BatchNorm1d/2d (folded with its running statistics, i.e. eval mode), ReLU,
    MaxPool2d(2), AdaptiveAvgPool2d(1) + Flatten (global average pooling), Flatten,
    Identity/Dropout (skipped). Containers other than nn.Sequential are accepted when their
    forward runs the children in order; that is verified on a random input.
    """
    leaves: list[tuple[str, nn.Module]] = []
    opaque = _walk(module, "", leaves)
    input_ops: list[str] = []
    layers: list[Layer] = []
    posts: list[list[str]] = []
    bn_ok = False  # a batch-norm may follow only a layer with nothing after it yet
    i = 0
    while i < len(leaves):
        path, m = leaves[i]
        ops = posts[-1] if layers else input_ops
        if isinstance(m, nn.Linear):
            w = m.weight.detach().float().clone()
            layers.append(Layer("linear", w, _bias(m, w.shape[0])))
            posts.append([])
            bn_ok = True
        elif isinstance(m, nn.Conv2d):
            layers.append(_conv(path, m))
            posts.append([])
            bn_ok = True
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not (layers and bn_ok):
                raise ParamsimError(
                    f"{path} ({type(m).__name__}) does not directly follow a Linear or Conv2d "
                    "layer, so it cannot be folded"
                )
            if m.running_mean is None or m.running_var is None:
                raise ParamsimError(f"{path} ({type(m).__name__}) keeps no running statistics")
            g = {"running_mean": m.running_mean, "running_var": m.running_var, "eps": m.eps}
            if m.affine:
                g["weight"], g["bias"] = m.weight.detach(), m.bias.detach()
            layers[-1] = _fold_bn(layers[-1], g, path)
            bn_ok = False
        elif isinstance(m, nn.ReLU):
            ops.append("relu")
            bn_ok = False
        elif isinstance(m, nn.MaxPool2d):
            _check_pool(path, m)
            ops.append("maxpool2")
            bn_ok = False
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size
            size = size if isinstance(size, tuple) else (size, size)
            nxt = leaves[i + 1][1] if i + 1 < len(leaves) else None
            if tuple(size) != (1, 1) or not _is_plain_flatten(nxt):
                raise ParamsimError(
                    f"{path} (AdaptiveAvgPool2d({m.output_size})) is supported only as "
                    "AdaptiveAvgPool2d(1) followed by Flatten (global average pooling)"
                )
            ops.append("gap")
            i += 1  # the Flatten is part of "gap"
            bn_ok = False
        elif isinstance(m, nn.Flatten):
            if not _is_plain_flatten(m):
                raise ParamsimError(f"{path} (Flatten) must flatten from dim 1 to the end")
            ops.append("flatten")
            bn_ok = False
        elif isinstance(m, _IDENTITY):
            pass
        else:
            raise ParamsimError(
                f"layer {path or '<root>'} of type {type(m).__name__} is not supported; "
                "supported: Linear, Conv2d (stride 1), BatchNorm, ReLU, MaxPool2d(2), "
                "AdaptiveAvgPool2d(1)+Flatten, Flatten, Dropout, Identity"
            )
        i += 1
    if not layers:
        raise ParamsimError(f"{type(module).__name__} has no Linear or Conv2d layer")
    layers = [
        Layer(lay.kind, lay.weight, lay.bias, lay.padding, tuple(p))
        for lay, p in zip(layers, posts, strict=True)
    ]
    # A module that starts with Linear and no Flatten reads flat vectors; the canonical form
    # reads images (N, C, H, W), so it flattens first (a no-op on flat inputs).
    flat_input = layers[0].kind == "linear" and not {"flatten", "gap"} & set(input_ops)
    if flat_input:
        input_ops.insert(0, "flatten")
    shape = _input_shape(layers, input_ops, input_shape)
    net = Network(tuple(layers), shape, tuple(input_ops))
    _verify(net, module, opaque, flat_input)
    return net


def _walk(module: nn.Module, path: str, out: list[tuple[str, nn.Module]]) -> bool:
    """Collect leaves in order; True when a non-Sequential container was walked into."""
    children = list(module.named_children())
    if not children:
        out.append((path, module))
        return False
    if _has_own_params(module):
        raise ParamsimError(
            f"{path or '<root>'} ({type(module).__name__}) has its own parameters besides its "
            "children; not supported"
        )
    opaque = not isinstance(module, nn.Sequential)
    for name, child in children:
        opaque |= _walk(child, f"{path}.{name}" if path else name, out)
    return opaque


def _has_own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _bias(m: nn.Module, n: int) -> torch.Tensor:
    b = getattr(m, "bias", None)
    return b.detach().float().clone() if b is not None else torch.zeros(n)


def _conv(path: str, m: nn.Conv2d) -> Layer:
    k = m.kernel_size
    problems = []
    if tuple(m.stride) != (1, 1):
        problems.append(f"stride {m.stride}")
    if m.groups != 1:
        problems.append(f"groups {m.groups}")
    if tuple(m.dilation) != (1, 1):
        problems.append(f"dilation {m.dilation}")
    if k[0] != k[1]:
        problems.append(f"non-square kernel {k}")
    if m.padding_mode != "zeros":
        problems.append(f"padding mode {m.padding_mode}")
    pad = m.padding
    if isinstance(pad, str):
        pad = (0, 0) if pad == "valid" else (k[0] // 2, k[1] // 2)
        if m.padding == "same" and k[0] % 2 == 0:
            problems.append("'same' padding with an even kernel")
    if pad[0] != pad[1]:
        problems.append(f"padding {m.padding}")
    if problems:
        raise ParamsimError(
            f"layer {path} (Conv2d) is not supported: {', '.join(problems)}; "
            "only stride 1, groups 1, square kernels and equal zero padding are"
        )
    w = m.weight.detach().float().clone()
    return Layer("conv", w, _bias(m, w.shape[0]), int(pad[0]))


def _check_pool(path: str, m: nn.MaxPool2d) -> None:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    stride = pair(m.stride if m.stride is not None else m.kernel_size)
    ok = (
        pair(m.kernel_size) == (2, 2)
        and stride == (2, 2)
        and pair(m.padding) == (0, 0)
        and pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )
    if not ok:
        raise ParamsimError(f"layer {path} ({m}) is not supported; only MaxPool2d(2) is")


def _is_plain_flatten(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1


def _input_shape(
    layers: list[Layer], input_ops: list[str], given: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    first = layers[0]
    if given is not None:
        shape = tuple(int(s) for s in given)
        if len(shape) != 3:
            raise ParamsimError(f"input_shape must be (channels, height, width), got {given}")
        if first.kind == "conv" and shape[0] != first.weight.shape[1]:
            raise ParamsimError(
                f"input_shape {shape} has {shape[0]} channels; the first convolution reads "
                f"{first.weight.shape[1]}"
            )
        if first.kind == "linear" and "flatten" in input_ops:
            _check_in_features(shape, first.weight.shape[1])
        return shape  # type: ignore[return-value]
    if first.kind == "conv":
        raise ParamsimError(
            "a convolutional network needs its input size: pass input_shape=(C, H, W) or a spec"
        )
    return _guess_shape(first.weight.shape[1])


def _verify(net: Network, module: nn.Module, opaque: bool, flat_input: bool) -> None:
    """For containers with their own forward, check the leaf order really is the computation."""
    if not opaque:
        return
    x = torch.rand((3, *net.input_shape), generator=torch.Generator().manual_seed(0))
    if flat_input:
        x = x.flatten(1)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(x)
            got = net(x)
    except Exception as exc:
        raise ParamsimError(
            f"{type(module).__name__} could not be checked against its layer list ({exc}); "
            "give an nn.Sequential"
        ) from exc
    finally:
        module.train(was_training)
    if (
        not isinstance(want, torch.Tensor)
        or want.shape != got.shape
        or not torch.allclose(want, got, rtol=1e-4, atol=1e-4)
    ):
        raise ParamsimError(
            f"{type(module).__name__}'s forward does not run its children in order; "
            "give an nn.Sequential"
        )
