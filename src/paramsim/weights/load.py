"""Read checkpoints (files, state_dicts, modules) into the canonical `Network` form.

Files are read without running any code: `.safetensors` through safetensors, `.pt`/`.pth`
only through `torch.load(weights_only=True)`, which refuses pickles that carry code. Every
tensor then passes `weights.checks` (structure, declared shapes, values) before anything is
built from it. A state_dict says nothing about pooling or padding, so CNN state_dicts need an
`ArchSpec`; MLP state_dicts are understood from their key names and shapes alone, strictly:
a key that is not part of the recognised layer chain is refused, never guessed into a layer.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.weights.arch import MAX_DEPTH, ArchSpec
from paramsim.weights.checks import (
    BN_BUFFERS,
    check_against_spec,
    check_regular_file,
    check_tensors,
    check_torch_zip,
    check_values,
    show,
    show_keys,
)
from paramsim.weights.module import check_in_features, from_module, guess_shape
from paramsim.weights.network import Layer, Network, fold_batchnorm

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Wrapper keys used by common training scripts around the actual state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# How many wrappers deep a state_dict may sit; also stops a dict that contains itself.
_MAX_WRAPPING = 4
# Safetensors metadata entries that may hold an ArchSpec JSON.
_SPEC_METADATA = ("arch", "spec")


# where an architecture comes from when a checkpoint does not carry one
SPEC_HINT = (
    "spec=ArchSpec(...) in Python, `compare --spec JSON`, or a .safetensors file with the "
    "`arch` metadata `zoo export` writes"
)


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
        path = Path(source)
        sd, metadata = _read_file(path)
        try:
            stored = _spec_from_metadata(path, metadata)
        except ParamsimError:
            if spec is None:
                raise
            stored = None  # unusable metadata: the spec given is what it asks for
        if spec is not None and stored is not None and spec != stored:
            raise ParamsimError(
                f"{path} stores its architecture ({stored.label} on {stored.input_shape}), and "
                f"the spec given says {spec.label} on {spec.input_shape}; drop the spec (--spec) "
                "to use the stored one"
            )
        try:
            return from_state_dict(sd, spec or stored, input_shape)
        except ParamsimError as exc:  # name the file: a directory may hold thousands
            if str(path) in str(exc):
                raise
            raise ParamsimError(f"{path}: {exc}") from None
    if isinstance(source, Mapping):
        return from_state_dict(_unwrap(source, "the given mapping"), spec, input_shape)
    raise ParamsimError(
        f"cannot load a {type(source).__name__}; give a checkpoint path, a state_dict, "
        "an nn.Module or a Network"
    )


# ---------------------------------------------------------------------------------------------
# files


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict in `path` and the file's metadata (safetensors only)."""
    check_regular_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _unwrap(_read_torch(path), str(path)), {}
    raise ParamsimError(
        f"{path}: unknown checkpoint suffix {suffix!r}; use .safetensors, .pt or .pth"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            # safetensors lists keys sorted as strings ("10.weight" before "2.weight");
            # restore numeric order so messages and ties follow the layer order.
            keys = sorted(f.keys(), key=_natural_key)
            sd = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise ParamsimError(
            f"{path} is not a readable safetensors file ({_short(exc)}); is it truncated?"
        ) from exc
    return sd, meta


def _spec_from_metadata(path: Path, meta: Mapping[str, str]) -> ArchSpec | None:
    """The ArchSpec a safetensors file declares, if any. Metadata that is not a JSON object
    belongs to another tool and is ignored; a JSON object must be a valid (bounded) spec."""
    for key in _SPEC_METADATA:
        text = meta.get(key)
        if not text:
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        try:
            return ArchSpec.from_json(data)
        except ParamsimError as exc:
            raise ParamsimError(
                f"{path}: its {key!r} metadata is not a usable architecture ({exc}); pass the "
                f"architecture yourself ({SPEC_HINT})"
            ) from exc
    return None


def _natural_key(key: str) -> list[str | int]:
    """Sort key that orders digit runs as numbers: 'layers.2' before 'layers.10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _read_torch(path: Path) -> Any:
    check_torch_zip(path)
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


def _unwrap(obj: Any, where: str, depth: int = 0) -> dict[str, torch.Tensor]:
    """The state_dict inside `obj`, looking through `{"state_dict": ...}` style wrappers
    (at most a few deep, so a dict that holds itself ends here too)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if depth < _MAX_WRAPPING:
            for key in WRAPPER_KEYS:
                inner = obj.get(key)
                if isinstance(inner, Mapping):
                    return _unwrap(inner, where, depth + 1)
    raise ParamsimError(
        f"{where} is not a state_dict (a mapping of names to tensors, or one wrapped under "
        f"{'/'.join(WRAPPER_KEYS)}); got {_describe(obj)}"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a mapping with keys {show_keys(obj, 5)}" if obj else "an empty mapping"
    return f"a {type(obj).__name__}"


# ---------------------------------------------------------------------------------------------
# state_dicts


def from_state_dict(
    sd: Mapping[str, torch.Tensor],
    spec: ArchSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Network:
    """A state_dict as a `Network`.

    With `spec`, the keys and shapes must be exactly the spec's (checked before the module
    is built), then the tensors load into `spec.build()`. Without, the state_dict must be an
    MLP chain (see `_chain`) with ReLU between layers (the only non-linearity the canonical
    form knows); shapes must chain.
    """
    sd = _unwrap(sd, "the state_dict")
    check_tensors(sd)
    if spec is not None:
        check_against_spec(sd, spec)
        check_values(sd)
        module = spec.build()
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ParamsimError(
                f"state_dict does not fit architecture {spec.label}: {_short(exc)}"
            ) from exc
        return from_module(module.eval(), input_shape or spec.input_shape, checked=True)
    chain = _chain(sd)
    check_values(sd)
    return _infer_mlp(chain, input_shape)


_LAYER_LEAVES = frozenset({"weight", "bias"})
_BN_LEAVES = frozenset({"weight", "bias", *BN_BUFFERS})


def _pattern(path: str) -> str:
    return re.sub(r"\d+", "#", path)


def _numbers(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _chain(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, bool, dict[str, torch.Tensor]]]:
    """The state_dict's modules in layer order as (path, is_batchnorm, tensors).

    Without a spec nothing says which keys form the network, so only one shape is read: the
    layers are numbered children of one container, all named alike up to their numbers
    (`0`, `2`, `4` of an nn.Sequential; `layers.0`, `layers.1`; `fc1`, `fc2`), holding
    weight[/bias]; batch-norms (running statistics) likewise numbered, each folded into the
    layer just before it. Every other key is refused by name, so a stray tensor can never
    become a layer.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        path, _, leaf = key.rpartition(".")
        groups.setdefault(path, {})[leaf] = value
    layers, bns, unknown = [], [], []
    for path, g in groups.items():
        is_bn = "running_mean" in g or "running_var" in g
        allowed = _BN_LEAVES if is_bn else _LAYER_LEAVES
        names = [f"{path}.{leaf}" if path else leaf for leaf in g]
        if not set(g) <= allowed or (not is_bn and "weight" not in g):
            unknown += names
        else:
            (bns if is_bn else layers).append(path)
    if not layers:
        raise ParamsimError(
            f"the state_dict holds no layer weights (keys {show_keys(list(sd), 5)})"
        )
    layer_pattern = Counter(_pattern(p) for p in layers).most_common(1)[0][0]
    depth = layer_pattern.count("#")
    bn_patterns = Counter(_pattern(p) for p in bns if _pattern(p).count("#") == depth)
    bn_pattern = bn_patterns.most_common(1)[0][0] if bn_patterns else None
    for path in layers + bns:
        if _pattern(path) not in (layer_pattern if path in layers else bn_pattern,):
            unknown += [f"{path}.{leaf}" if path else leaf for leaf in groups[path]]
    if unknown:
        raise ParamsimError(
            f"the state_dict has keys outside its layer chain ({layer_pattern or '<root>'}."
            f"weight, ...): {show_keys(unknown)}; without an architecture they cannot be "
            "placed, so the checkpoint was refused; remove them, or pass the architecture "
            f"({SPEC_HINT})"
        )
    if len(layers) > MAX_DEPTH:
        raise ParamsimError(f"the state_dict has {len(layers)} layers; the limit is {MAX_DEPTH}")
    order = sorted([(_numbers(p), 0, p) for p in layers] + [(_numbers(p), 1, p) for p in bns])
    return [(p, bool(is_bn), groups[p]) for _, is_bn, p in order]


def _infer_mlp(
    chain: list[tuple[str, bool, dict[str, torch.Tensor]]],
    input_shape: tuple[int, int, int] | None,
) -> Network:
    layers: list[Layer] = []
    has_conv = False
    after_bn = False
    for path, is_bn, g in chain:
        name = path or "<root>"
        if is_bn:  # batch-norm: fold into the layer before
            if not layers or after_bn:
                raise ParamsimError(
                    f"batch-norm {show(name)} does not directly follow a layer; cannot fold it"
                )
            mean = g.get("running_mean")
            if mean is None or mean.shape != (layers[-1].units,):
                got = tuple(mean.shape) if mean is not None else "no running_mean"
                raise ParamsimError(
                    f"batch-norm {show(name)} has running_mean {got} but the layer before "
                    f"it has {layers[-1].units} units"
                )
            bad = [k for k, t in g.items() if k != "num_batches_tracked" and t.shape != mean.shape]
            if bad:
                raise ParamsimError(
                    f"batch-norm {show(name)}: {', '.join(bad)} do not have "
                    f"{tuple(mean.shape)} values like running_mean"
                )
            layers[-1] = fold_batchnorm(layers[-1], g, show(name))
            after_bn = True
            continue
        after_bn = False
        w = g["weight"]
        prev = layers[-1].units if layers else None
        if w.dim() == 4:
            has_conv = True
            if prev is not None and w.shape[1] != prev:
                raise ParamsimError(
                    f"shapes do not chain at {show(name)}: convolution reads {w.shape[1]} "
                    f"channels but the layer before has {prev}"
                )
        elif w.dim() == 2:
            if prev is not None and w.shape[1] != prev and not has_conv:
                raise ParamsimError(
                    f"shapes do not chain at {show(name)}: weight {tuple(w.shape)} reads "
                    f"{w.shape[1]} inputs but the layer before has {prev} units"
                )
        else:
            raise ParamsimError(
                f"{show(name)}.weight has shape {tuple(w.shape)}; not a linear or conv layer"
            )
        b = g.get("bias")
        if b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype)
        if b.shape != (w.shape[0],):
            raise ParamsimError(
                f"{show(name)}.bias has shape {tuple(b.shape)}, expected ({w.shape[0]},)"
            )
        kind = "conv" if w.dim() == 4 else "linear"
        layers.append(Layer(kind, w.detach().float(), b.detach().float()))
    if has_conv:
        raise ParamsimError(
            "this state_dict holds convolutions; padding and pooling are not stored in a "
            f"state_dict, so pass its architecture ({SPEC_HINT})"
        )
    layers = [
        Layer(lay.kind, lay.weight, lay.bias, 0, ("relu",) if i < len(layers) - 1 else ())
        for i, lay in enumerate(layers)
    ]
    shape = input_shape or guess_shape(layers[0].weight.shape[1])
    check_in_features(shape, layers[0].weight.shape[1])
    return Network(tuple(layers), shape, ("flatten",))
