"""Second-order, permutation-invariant representations in input space.

The chain X_l = W_1^T W_2^T ... W_l^T maps hidden layer l back to the input: permutations of
the middle layers cancel (P^T P = I) and the Gram G_l = X_l X_l^T cancels the last one, so
G_l depends only on what layer l computes linearly from the input. Networks of different
widths give Grams of the same size and can be compared; MLPs and CNNs cannot (their inputs
are pixels vs. kernel taps).

CNNs: each convolution's kernel is composed with the chain so far (a full convolution of
kernels, summed over the shared channel), so the composite kernel and its receptive field grow
layer by layer. Approximations, because the chain is linear: ReLU is ignored (as for MLPs);
padding is ignored (the composite is the linear map away from the borders); MaxPool2d(2) is
replaced by 2x2 average pooling, i.e. a 2x2 box filter after which later kernels are dilated
by the accumulated stride; global average pooling followed by a linear layer becomes a 1x1
kernel (the average over positions is dropped); a linear layer on a flattened feature map is
a kernel the size of that map.

`space="pixels"` (every method here) instead runs the same linearised network exactly on the
identity basis of the input, so each layer becomes a (pixels x features) map: identical to
the kernel chain for MLPs, padding-exact for CNNs, and comparable between MLPs and CNNs that
read the same input shape (mixed zoos).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from paramsim.errors import ParamsimError
from paramsim.features._common import FixedMethod, ensure, per_group, triu
from paramsim.features.base import Context
from paramsim.vectors import EPS
from paramsim.vectors import unit_rows as unit
from paramsim.weights import Network, NetworkStack, group_by_signature


def chain_maps(
    stack: NetworkStack,
    upto: int | None = None,
    row_norm: bool = False,
    bias: bool = False,
    space: str = "kernel",
) -> tuple[str, list[torch.Tensor]]:
    """X_l for l = 1..upto as (M, rows, units_l) tensors, and the input space they live in.

    The input space is a string key: two networks can be compared only when keys match.
    `space="pixels"` gives every network's linearised map from input pixels instead (see
    `_pixel_chain`), which puts MLPs and CNNs of one input shape in the same space.
    """
    t = stack.template
    upto = len(t.layers) if upto is None else upto
    if space == "pixels":
        if row_norm:
            raise ParamsimError("row_norm applies to space='kernel' only")
        return f"pixels {t.input_shape}" + (" + bias" if bias else ""), _pixel_chain(
            stack, upto, bias
        )
    if space != "kernel":
        raise ParamsimError(f"space must be 'kernel' or 'pixels', got {space!r}")
    if all(lay.kind == "linear" for lay in t.layers):
        # keyed by the input's shape, not its size: 64 inputs read as 1x8x8 and as 4x4x4
        # are different pixels, and their chains must not be compared
        return f"mlp inputs {t.input_shape}" + (" + bias" if bias else ""), _mlp_chain(
            stack, upto, row_norm, bias
        )
    if t.layers[0].kind != "conv":
        raise ParamsimError("networks whose first layer is linear but later ones convolutional")
    if bias:
        raise ParamsimError("bias=True is implemented for MLPs only (or use space='pixels')")
    if t.input_ops:
        raise ParamsimError(f"CNN input operations {t.input_ops} are not supported")
    maps = _cnn_chain(stack, upto, row_norm)
    c = t.input_shape[0]
    return f"cnn {c} channels", maps


def _pixel_chain(stack: NetworkStack, upto: int, bias: bool) -> list[torch.Tensor]:
    """Each layer's output as a linear function of the input pixels: (M, pixels[+1], features).

    The network is linearised the same way as the kernel chain (ReLU dropped, max pooling
    read as 2x2 average pooling) but run exactly, padding included, on the identity basis.
    For MLPs this equals the kernel chain; a CNN layer's features are all its channels at
    all positions, so a channel permutation permutes columns and the Gram is unchanged.
    With `bias`, the last row is the layer's output on a blank input (the affine part).
    A layer's map is read before its pooling (the kernel chain reads it after): the two
    spaces never meet, since their keys differ, and each is consistent within itself.
    """
    t = stack.template
    shape = t.input_shape
    d = shape[0] * shape[1] * shape[2]
    basis = torch.cat([torch.eye(d), torch.zeros(1, d)]).reshape(d + 1, *shape)

    def op(name: str, h: torch.Tensor) -> torch.Tensor:
        if name == "maxpool2":
            return F.avg_pool2d(h, 2)
        if name == "gap":
            return h.mean(dim=(-2, -1))
        if name == "flatten":
            return h.flatten(1)
        return h  # relu: dropped by the linearisation

    def one(ws, bs):
        h = basis
        for name in t.input_ops:
            h = op(name, h)
        outs = []
        for lay, w, b in zip(t.layers[:upto], ws, bs, strict=False):
            b = b if bias else torch.zeros_like(b)
            h = (
                F.linear(h, w, b)
                if lay.kind == "linear"
                else F.conv2d(h, w, b, padding=lay.padding)
            )
            flat = h.flatten(1)
            outs.append(torch.cat([flat[:d] - flat[d:], flat[d:]]) if bias else flat[:d])
            for name in lay.post:
                h = op(name, h)
        return outs

    return list(torch.func.vmap(one)(stack.weights[:upto], stack.biases[:upto]))


def _norm_rows_t(w: torch.Tensor) -> torch.Tensor:
    """Row-normalise W^T (per input unit, over the output units); w is (M, out, in, ...)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _mlp_chain(stack: NetworkStack, upto: int, row_norm: bool, bias: bool) -> list[torch.Tensor]:
    maps = []
    x = None
    for w, b in list(zip(stack.weights, stack.biases, strict=True))[:upto]:
        w = w.reshape(w.shape[0], w.shape[1], -1)
        if row_norm:
            w = _norm_rows_t(w)
        wt = w.transpose(1, 2)  # (M, in, out)
        if bias:  # affine map as [[W, b], [0, 1]]: the last input row is the constant 1
            m, n_in, n_out = wt.shape
            aug = torch.zeros(m, n_in + 1, n_out + 1, dtype=wt.dtype)
            aug[:, :n_in, :n_out] = wt
            aug[:, n_in, :n_out] = b
            aug[:, n_in, n_out] = 1.0
            wt = aug
        x = wt if x is None else x @ wt
        maps.append(x[:, :, :-1] if bias else x)
    return maps


def _compose(k: torch.Tensor, w: torch.Tensor, dilation: int) -> torch.Tensor:
    """Composite kernel of applying `w` (M, o, c, kh, kw) after `k` (M, c, i, S1, S2).

    y = w * (k * x) for cross-correlations equals a cross-correlation of x with the full
    convolution of the kernels, summed over the middle channel c; `w` is dilated because it
    reads a map sub-sampled by `dilation` in input coordinates.
    """
    m, c, i, s1, s2 = k.shape
    o, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    inp = k.permute(2, 0, 1, 3, 4).reshape(i, m * c, s1, s2)
    wt = w.flip(-1, -2).reshape(m * o, c, kh, kw)
    pad = (dilation * (kh - 1), dilation * (kw - 1))
    out = F.conv2d(inp, wt, padding=pad, dilation=dilation, groups=m)
    return out.reshape(i, m, o, out.shape[-2], out.shape[-1]).permute(1, 2, 0, 3, 4)


def _box(k: torch.Tensor, stride: int) -> torch.Tensor:
    """2x2 average pooling (the linear stand-in for max pooling) composed onto `k`."""
    s1, s2 = k.shape[-2:]
    out = k.new_zeros(*k.shape[:-2], s1 + stride, s2 + stride)
    for a in (0, stride):
        for b in (0, stride):
            out[..., a : a + s1, b : b + s2] += k / 4
    return out


def _cnn_chain(stack: NetworkStack, upto: int, row_norm: bool) -> list[torch.Tensor]:
    t = stack.template
    m = len(stack)
    _, mh, mw = t.input_shape
    k = None
    stride, flat_pending = 1, False
    maps = []
    for lay, w in list(zip(t.layers, stack.weights, strict=True))[:upto]:
        if lay.kind == "conv":
            kern = w
            mh = mh + 2 * lay.padding - w.shape[-2] + 1
            mw = mw + 2 * lay.padding - w.shape[-1] + 1
        elif flat_pending:  # a linear layer on a flattened map: a kernel the map's size
            kern = w.reshape(m, w.shape[1], -1, mh, mw)
            flat_pending, mh, mw = False, 1, 1
        else:  # after global pooling, or after another linear layer: a 1x1 kernel
            kern = w.reshape(m, w.shape[1], -1, 1, 1)
        if row_norm:
            kern = _norm_rows_t(kern)
        k = kern if k is None else _compose(k, kern, stride)
        for op in lay.post:
            if op == "maxpool2":
                k, stride, mh, mw = _box(k, stride), stride * 2, mh // 2, mw // 2
            elif op == "gap":
                mh, mw = 1, 1
            elif op == "flatten":
                flat_pending = mh * mw > 1
        maps.append(k.reshape(m, k.shape[1], -1).transpose(1, 2))
    return maps


def _gram_block(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm upper triangle of X X^T for a batch (M, rows, units)."""
    return unit(triu(x @ x.transpose(1, 2)))


def _embed_block(kind: str, x: torch.Tensor) -> torch.Tensor:
    """One block of an embedding from its factor (see `_InputSpaceMethod.gram_factors`)."""
    return _gram_block(x) if kind == "gram" else x


def _diff_block(x: torch.Tensor) -> torch.Tensor:
    """Class-difference direction(s) in input space: column 1 - column 0 for two outputs,
    else the columns centred over classes (flattened). Unit norm."""
    if x.shape[-1] == 2:
        return unit(x[..., 1] - x[..., 0])
    return unit((x - x.mean(dim=-1, keepdim=True)).flatten(1))


class _InputSpaceMethod(FixedMethod):
    """Shared checking for the methods that live in input space."""

    weights_only = True
    row_norm = False
    bias = False
    max_rows = 2048  # a Gram has rows^2 / 2 entries per model and depth

    def _layout(self, net: Network) -> tuple:
        """What must agree between two networks for their features to be comparable."""
        raise NotImplementedError

    space = "kernel"

    def _maps(self, stack: NetworkStack, upto: int | None) -> tuple[str, list[torch.Tensor]]:
        return chain_maps(stack, upto, self.row_norm, self.bias, self.space)

    def gram_factors(self, stack: NetworkStack) -> list[tuple[str, torch.Tensor]]:
        """The embedding's blocks, unformed: ("gram", X) with X (M, rows, units) stands for
        the block unit(triu(X X^T)), ("dense", V) with V (M, D) for V itself. The embedding
        is their concatenation; `factored_cross_similarity` compares networks from these
        factors without forming a Gram."""
        raise NotImplementedError

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        ensure(self, networks)
        return per_group(
            networks, lambda s: torch.cat([_embed_block(k, x) for k, x in self.gram_factors(s)], 1)
        )

    def similarity(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        """All pairs; from the Gram factors, within SIMILARITY_BUDGET, when the Grams of every
        network would not fit it (chain on 495 MLPs of 784 inputs: 5.2 GB of Grams)."""
        ensure(self, networks)
        if gram_bytes(self, networks) > SIMILARITY_BUDGET and factoring_pays(self, networks):
            return factored_cross_similarity(self, networks, networks, SIMILARITY_BUDGET)
        return super().similarity(networks, context)

    def check(self, networks: Sequence[Network]) -> str | None:
        layouts = set()
        for idx in group_by_signature(networks):
            try:
                layouts.add(self._layout(networks[idx[0]]))
            except ParamsimError as exc:
                return str(exc)
        if len(layouts) > 1:
            kinds = {lay[0].split()[0] for lay in layouts}
            if len(kinds) > 1:
                return (
                    "MLPs and CNNs live in different input spaces (pixels vs. kernel taps); "
                    "use space='pixels' or probes"
                )
            if len({len(lay) for lay in layouts}) > 1:
                return (
                    "networks differ in the number of hidden layers; pick depths all have, "
                    "e.g. depths=(-1,) for the last hidden layer"
                )
            return f"these networks map to different input spaces: {sorted(layouts)}"
        rows = max(max(r for r in lay[1:] if isinstance(r, int)) for lay in layouts)
        if rows > self.max_rows:
            return (
                f"a Gram would have {rows} x {rows} entries per model (max_rows "
                f"{self.max_rows}); use fewer depths or probes"
            )
        return None


class Gram1Method(_InputSpaceMethod):
    """First-layer Gram W_1^T W_1 (input x input), upper triangle, cosine.

    Convolutions use the kernel reshaped to (out, in * k * k).
    """

    name = "gram1"

    def __init__(self, row_norm: bool = False, bias: bool = False, space: str = "kernel") -> None:
        self.row_norm, self.bias, self.space = row_norm, bias, space

    def _first(self, stack: NetworkStack) -> tuple[str, torch.Tensor]:
        """The first layer's map without the operations after it: the kernel chain composes
        a max pooling there into its map (a 2x2 box filter), which is not W_1."""
        t = stack.template
        first = replace(t.layers[0], post=())
        stack = replace(stack, template=replace(t, layers=(first, *t.layers[1:])))
        space, maps = self._maps(stack, 1)
        return space, maps[0]

    def _layout(self, net: Network) -> tuple:
        space, x = self._first(NetworkStack.from_networks([net]))
        return (space, x.shape[1])

    def gram_factors(self, stack: NetworkStack) -> list[tuple[str, torch.Tensor]]:
        return [("gram", self._first(stack)[1])]


class ChainMethod(_InputSpaceMethod):
    """Chain-aligned Gram at each hidden depth, each block unit-norm, concatenated, cosine.

    `depths` are 1-based hidden layers (negative counts back from the last hidden layer,
    -1 = last); None means every hidden layer. Networks of different depths compare when
    `depths` picks layers they all have (e.g. (-1,) or (1, 2)).
    `row_norm` is the authors' per-input normalisation; it hurt in prototypes (off by default).
    """

    name = "chain"

    def __init__(
        self,
        depths: Sequence[int] | None = None,
        row_norm: bool = False,
        bias: bool = False,
        space: str = "kernel",
    ) -> None:
        self.depths = None if depths is None else tuple(int(d) for d in depths)
        self.row_norm, self.bias, self.space = row_norm, bias, space

    def _depths(self, net: Network) -> list[int]:
        n_hidden = len(net.layers) - 1
        if n_hidden < 1:
            raise ParamsimError("chain needs at least one hidden layer; use gram1 or e2e")
        want = self.depths or tuple(range(1, n_hidden + 1))
        out = []
        for d in want:
            dd = d if d > 0 else n_hidden + 1 + d
            if not 1 <= dd <= n_hidden:
                raise ParamsimError(f"depth {d} does not exist in a net with {n_hidden} hidden")
            out.append(dd)
        return out

    def _layout(self, net: Network) -> tuple:
        depths = self._depths(net)
        space, maps = self._maps(NetworkStack.from_networks([net]), max(depths))
        return (space, *(maps[d - 1].shape[1] for d in depths))

    def gram_factors(self, stack: NetworkStack) -> list[tuple[str, torch.Tensor]]:
        depths = self._depths(stack.template)
        maps = self._maps(stack, max(depths))[1]
        return [("gram", maps[d - 1]) for d in depths]


class E2EMethod(_InputSpaceMethod):
    """The chain carried through to the output units: X_L (input x classes).

    Output units are not permuted, so X_L is itself invariant. Embedding: the unit-norm Gram
    of X_L (`"gram"`, second order, symmetric in the classes) and the class-difference
    direction X_L[:, 1] - X_L[:, 0] (`"diff"`, signed); `blocks` picks them. Works across
    widths and depths.
    """

    name = "e2e"

    def __init__(
        self,
        blocks: Sequence[str] = ("gram", "diff"),
        row_norm: bool = False,
        bias: bool = False,
        space: str = "kernel",
    ) -> None:
        bad = set(blocks) - {"gram", "diff"}
        if bad or not blocks:
            raise ParamsimError(f"e2e blocks must be among 'gram', 'diff'; got {list(blocks)}")
        self.blocks = tuple(blocks)
        self.row_norm, self.bias, self.space = row_norm, bias, space

    def _layout(self, net: Network) -> tuple:
        space, maps = self._maps(NetworkStack.from_networks([net]), None)
        return (space, *maps[-1].shape[1:])

    def gram_factors(self, stack: NetworkStack) -> list[tuple[str, torch.Tensor]]:
        x = self._maps(stack, None)[1][-1]
        return [("gram", x) if b == "gram" else ("dense", _diff_block(x)) for b in self.blocks]


# Comparing networks without forming their Grams. For G = X X^T (X: rows x units), the block
# unit(triu(G)) has inner products <triu(G_a), triu(G_b)> = (||X_a^T X_b||_F^2 +
# <diag G_a, diag G_b>) / 2: the diagonal is counted once, the off-diagonal half once. With
# few units per row (784 inputs x 32 units for the Fashion-MNIST MLPs) the factors are tiny
# next to the Gram (25,088 against 307,720 numbers), so a probe-to-zoo similarity needs no
# gallery of Grams, on disk or in memory. Everything is float64.


def factor_shapes(method, networks: Sequence[Network]) -> list[tuple[str, int, int]]:
    """(kind, rows, units) of each block, the widest over the networks' architectures
    (units 1 for a dense block of `rows` numbers)."""
    widest: dict[int, tuple[str, int, int]] = {}
    for idx in group_by_signature(networks):
        with torch.no_grad():
            blocks = method.gram_factors(NetworkStack.from_networks([networks[idx[0]]]))
        for b, (kind, x) in enumerate(blocks):
            shape = (kind, x.shape[1], x.shape[2] if kind == "gram" else 1)
            widest[b] = max(widest.get(b, shape), shape, key=lambda s: s[2])
    return [widest[b] for b in sorted(widest)]


SIMILARITY_BUDGET = 512 * 2**20  # bytes an all-pairs similarity may hold in Grams


def gram_bytes(method, networks: Sequence[Network]) -> int:
    """Bytes of the embeddings of all networks, about three copies of float64 (the float32
    blocks, the float64 copy, the unit rows `cosine_matrix` makes)."""
    width = sum(
        rows * (rows + 1) // 2 if kind == "gram" else rows
        for kind, rows, _ in factor_shapes(method, networks)
    )
    return 3 * 8 * width * len(networks)


def factoring_pays(method, networks: Sequence[Network]) -> bool:
    """Whether the method has Gram factors and each block's X_a^T X_b (units^2 numbers per
    pair of networks) is no larger than the Gram's upper triangle it replaces."""
    if not hasattr(method, "gram_factors"):
        return False
    return all(
        kind != "gram" or units * units <= rows * (rows + 1) // 2
        for kind, rows, units in factor_shapes(method, networks)
    )


def factored_chunk(row_bytes: int, pair_bytes: int, budget_bytes: int) -> int:
    """The largest c with 2 c row_bytes + c^2 pair_bytes <= budget_bytes (at least 1): a
    chunk of c queries and one of c stored networks, with their pairwise products."""

    def size(c: int) -> int:
        return 2 * c * row_bytes + c * c * pair_bytes

    if row_bytes <= 0 and pair_bytes <= 0:
        raise ValueError("a chunk must cost something per network or per pair")
    r, p, b = float(row_bytes), float(pair_bytes), float(budget_bytes)
    guess = b / max(2 * r, 1.0) if p == 0 else (np.sqrt(r * r + p * b) - r) / p
    c = max(1, int(guess))
    while c > 1 and size(c) > budget_bytes:
        c -= 1
    while size(c + 1) <= budget_bytes:
        c += 1
    return c


def factored_chunk_for(method, networks: Sequence[Network], budget_bytes: int) -> int:
    """`factored_chunk` for this method's blocks on these networks. Per network: its
    float64 factors three times over (the float32 maps, the float64 copy, the transposed
    one) and the diagonals; per pair: the widest block's X_a^T X_b and a few (q, g)
    float64 arrays (the products so far, the diagonal term, the result)."""
    shapes = factor_shapes(method, networks)
    row_bytes = sum(8 * rows * (3 * units + 1) for _, rows, units in shapes)
    pair_bytes = 8 * (max(units * units for _, _, units in shapes) + 4)
    return factored_chunk(row_bytes, pair_bytes, budget_bytes)


def _factor_stats(method, networks: Sequence[Network]) -> list[list]:
    """Per architecture group: (indices, blocks) with each block (kind, X, diag, scale,
    self_sq): X as float64 (rows, M * units) for a Gram block ((M, D) for a dense one), the
    Gram's diagonal, the factor that makes the block unit norm and its squared norm after."""
    out = []
    for idx in group_by_signature(networks):
        stack = NetworkStack.from_networks([networks[i] for i in idx])
        with torch.no_grad():
            blocks = method.gram_factors(stack)
        stats = []
        for kind, x in blocks:
            x = x.double()
            if kind != "gram":
                stats.append((kind, x, None, torch.ones(len(x), dtype=x.dtype), x.square().sum(1)))
                continue
            m, rows, units = x.shape
            xtx = x.transpose(1, 2) @ x
            diag = x.square().sum(-1)  # (M, rows)
            norm = ((xtx.square().sum((1, 2)) + diag.square().sum(1)) / 2).sqrt()
            scale = 1 / norm.clamp_min(EPS)  # unit_rows: a zero block stays zero
            flat = x.permute(1, 0, 2).reshape(rows, m * units)
            stats.append((kind, flat, diag, scale, (norm * scale).square()))
        out.append((idx, stats))
    return out


def _block_products(a, b) -> torch.Tensor:
    """(q, g) inner products of the unit blocks of two groups."""
    kind, xa, da, sa, _ = a
    _, xb, db, sb, _ = b
    if kind != "gram":
        return xa @ xb.T
    q, g = len(da), len(db)
    c = xa.T @ xb  # (q * units_a, g * units_b): every X_a^T X_b at once
    t = c.square_().reshape(q, c.shape[0] // q, g, c.shape[1] // g).sum((1, 3))
    t += da @ db.T
    return t * (sa[:, None] * sb[None, :] / 2)


def factored_cross_similarity(
    method, queries: Sequence[Network], gallery: Sequence[Network], budget_bytes: int
) -> np.ndarray:
    """(len(queries), len(gallery)) cosine similarity of the method's embeddings, computed
    from its Gram factors (`gram_factors`) in chunks held within `budget_bytes`. Equals
    `cosine_matrix(embed(queries), embed(gallery))` up to rounding (it is float64
    throughout, where `embed` forms the Grams in float32)."""
    ensure(method, list(queries) + list(gallery))
    chunk = factored_chunk_for(method, list(queries) + list(gallery), budget_bytes)
    out = np.empty((len(queries), len(gallery)))
    for q0 in range(0, len(queries), chunk):
        qs = _factor_stats(method, queries[q0 : q0 + chunk])
        for g0 in range(0, len(gallery), chunk):
            gs = _factor_stats(method, gallery[g0 : g0 + chunk])
            for qi, qb in qs:
                qn = sum(b[4] for b in qb).sqrt().clamp_min(EPS)
                for gi, gb in gs:
                    gn = sum(b[4] for b in gb).sqrt().clamp_min(EPS)
                    if len(qb) != len(gb):
                        raise ParamsimError(f"{method.name}: networks with different blocks")
                    s = sum(_block_products(a, b) for a, b in zip(qb, gb, strict=True))
                    s = s / (qn[:, None] * gn[None, :])
                    out[np.ix_(np.asarray(qi) + q0, np.asarray(gi) + g0)] = s.numpy()
    return out
