"""An `nn.Module` read into the canonical `Network` form, leaf by leaf.

The module's own tensors pass the same checks as a file's (`weights.checks`), so a module
with NaN weights or a quantized layer is refused the same way a checkpoint is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.weights.checks import check_tensors, check_values
from paramsim.weights.network import Layer, Network, fold_batchnorm

# Modules that are the identity in eval mode.
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def from_module(
    module: nn.Module, input_shape: tuple[int, int, int] | None = None, *, checked: bool = False
) -> Network:
    """An `nn.Module` whose leaves run in registration order, as a `Network`.

    Supported leaves: Linear, Conv2d (stride 1, groups 1, dilation 1, square kernel, zero
    padding), BatchNorm1d/2d (folded with its running statistics, i.e. eval mode), ReLU,
    MaxPool2d(2), AdaptiveAvgPool2d(1) + Flatten (global average pooling), Flatten,
    Identity/Dropout (skipped). Containers other than nn.Sequential are accepted when their
    forward runs the children in order; that is verified on a random input. `checked`
    skips the tensor checks for a module built from an already checked state_dict.
    """
    leaves: list[tuple[str, nn.Module]] = []
    opaque = _walk(module, "", leaves)
    if not checked:
        state = module.state_dict()
        check_tensors(state)
        check_values(state)
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
            layers[-1] = fold_batchnorm(layers[-1], g, path)
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
            check_in_features(shape, first.weight.shape[1])
        return shape  # type: ignore[return-value]
    if first.kind == "conv":
        raise ParamsimError(
            "a convolutional network needs its input size: pass input_shape=(C, H, W) or a spec"
        )
    return guess_shape(first.weight.shape[1])


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


def guess_shape(n: int) -> tuple[int, int, int]:
    """(1, s, s) when `n` is a square (images are the common case), else (1, 1, n)."""
    s = math.isqrt(n)
    return (1, s, s) if s * s == n else (1, 1, n)


def check_in_features(shape: tuple[int, int, int], n: int) -> None:
    if math.prod(shape) != n:
        raise ParamsimError(f"input_shape {shape} has {math.prod(shape)} values; layer 1 reads {n}")
