"""The LPS network: trained networks in, one L2-normalised embedding per network out.

Two branches, both invariant to permutations of hidden units:

* weight space (MLPs): the chain X_1 = W_1^T, X_l = X_{l-1} W_l^T (biases carried as an extra
  input row) lives in input x units space, so hidden permutations cancel in the Gram
  X_l X_l^T. A learned U_l (input x r) projects it as (U_l^T X_l)(X_l^T U_l), never forming
  the input x input matrix, and the chain carried to the outputs gives one column per output
  unit, read as a set (`SetReadout`).
* function space (any architecture): learned probe inputs; a model is read through each
  output unit's responses to the probes, again as a set (optionally also the Gram of its
  per-unit normalised last hidden activations, or those units as a set).

Each block is unit-normalised, weighted, and mapped linearly; the two branch vectors are
normalised and concatenated (or, with `combine="sum"`, added in one space), so a model that
only one branch can read (a CNN) is compared with an MLP on the function part alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.lps.config import LPSConfig
from paramsim.vectors import unit_rows
from paramsim.weights import Network, NetworkStack, group_by_signature

EPS = 1e-8
# models per stacked batch when embedding; 256 embedded 2-3x faster than 4096 on the CPU
# (MLPs 64-32-32-2, 1 thread: the Grams of a batch stay in cache; benchmarks/bench_lps.py)
CPU_BATCH = 256
GPU_BATCH = 4096
PROBE_MARGIN = 0.05  # probe pixels start in [margin, 1 - margin]


def _triu_vec(s: torch.Tensor) -> torch.Tensor:
    """Upper triangle of symmetric (..., n, n) with off-diagonals scaled by sqrt(2): the
    Frobenius inner product of the matrices equals the dot product of the vectors."""
    n = s.shape[-1]
    iu = torch.triu_indices(n, n, device=s.device)
    scale = torch.full((iu.shape[1],), math.sqrt(2.0), dtype=s.dtype, device=s.device)
    scale[iu[0] == iu[1]] = 1.0
    return s[..., iu[0], iu[1]] * scale


def _signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (sqrt(|x| + 1e-6) - 1e-3): shifted so the gradient stays finite at zero.

    Without autograd it overwrites `x` and makes one temporary instead of six: these are the
    largest tensors of an embedding (a 65 x 65 Gram per model and depth on digits), and their
    elementwise passes were half of its time."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.sign(x) * (torch.sqrt(x.abs() + 1e-6) - 1e-3)
    mag = x.abs().add_(1e-6).sqrt_().sub_(1e-3)
    return torch.copysign(mag, x, out=x)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return unit_rows(x, eps=EPS)


def _orthogonal_(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal rows or columns (whichever fits), or the identity when square."""
    rows, cols = w.shape
    if rows == cols:
        with torch.no_grad():
            w.copy_(torch.eye(rows))
        return w
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded LAPACK QR is 10-100x slower on a busy machine
    try:
        q, r = torch.linalg.qr(a)
    finally:
        torch.set_num_threads(threads)
    q = q * torch.sign(torch.diagonal(r))
    with torch.no_grad():
        w.copy_(q if rows > cols else q.T)
    return w


class SetReadout(nn.Module):
    """Per-output-unit vectors (M, n, K) -> sum over units k of W2 relu(W1 u_k + b1).

    `u_k` is output unit k's column, centred over the K units and scaled by the model's norm
    over all of them. Summing over k makes the readout blind to the order of output units,
    and the ReLU with a learned offset lets it tell a unit that fires for a class from one
    that fires against it, so two tasks that share one class share one term (ProbeLog,
    Horwitz et al. 2025, compares models by such per-output-unit probe responses).
    """

    def __init__(self, n_in: int, hidden: int, emb: int, gen: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(_orthogonal_(torch.empty(hidden, n_in), gen))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(_orthogonal_(torch.empty(emb, hidden), gen))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=2, keepdim=True)
        k = z.shape[2]
        z = z * (math.sqrt(k) / z.flatten(1).norm(dim=1).clamp_min(EPS))[:, None, None]
        h = torch.relu(torch.einsum("mnk,hn->mkh", z, self.w1) + self.b1)
        return h.sum(1) @ self.w2.T


class UnitSetReadout(SetReadout):
    """Hidden units' probe responses (M, P, units) -> mean over units of W2 relu(W1 u + b1).

    Each unit's response over the probes is centred and unit-normalised (so ReLU rescaling of
    a unit does not matter) and read by one shared small network; the mean over units makes
    it blind to their order and count, so models of any width land in one space (DeepSets,
    Zaheer et al. 2017, over the units of the last hidden layer).
    """

    # the same W1, b1, W2 as SetReadout (n_in = probes); only the reading differs

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h - h.mean(dim=1, keepdim=True)
        h = h / h.norm(dim=1, keepdim=True).clamp_min(EPS)
        z = torch.relu(torch.einsum("mpu,hp->muh", h, self.w1) + self.b1)
        return z.mean(1) @ self.w2.T


class LPSNet(nn.Module):
    """Learnable parameter similarity network; see the module docstring for the design."""

    def __init__(
        self,
        config: LPSConfig,
        seed: int = 0,
        probe_images: torch.Tensor | None = None,
        input_basis: torch.Tensor | None = None,
    ) -> None:
        """`probe_images` (up to n_probes, in [0, 1]) start the first probes; the rest start
        as uniform noise, drawn from `seed` either way so the other parameters do not move.
        `input_basis` (a row per chain row, inputs and bias, and at least the kept
        directions' columns, orthonormal, most important first) starts every input
        projection U_l and V on its first columns when the projection keeps fewer directions
        than the chain has rows; random columns otherwise."""
        super().__init__()
        self.config = cfg = config
        self.started_on_data = False  # input projections started on `input_basis`
        gen = torch.Generator().manual_seed(seed)
        self.d = d = cfg.input_rows
        self.r = cfg.kept_directions
        emb = cfg.emb_dim
        k = cfg.n_outputs
        self.n_slots = (
            (1 if not cfg.chain else cfg.max_hidden_depths + 1) if cfg.second_order else 0
        )
        if cfg.weight_branch:
            if cfg.second_order:
                tri = self.r * self.r  # the full r x r matrix: a view, cheaper than its triangle
                if cfg.flat_head:
                    self.register_buffer("U", torch.eye(d).expand(self.n_slots, d, d).clone())
                else:
                    self.U = nn.Parameter(torch.empty(self.n_slots, d, self.r))
                    for s in range(self.n_slots):
                        _orthogonal_(self.U.data[s], gen)
                self.gram_heads = nn.Parameter(torch.empty(self.n_slots, emb, tri))
                for s in range(self.n_slots):
                    _orthogonal_(self.gram_heads.data[s], gen)
            if cfg.class_direction:
                if not cfg.chain:
                    raise ParamsimError("class_direction needs the chain (chain=True)")
                self.V = nn.Parameter(_orthogonal_(torch.empty(d, self.r), gen))
                if cfg.set_readout:
                    self.dir_set = SetReadout(self.r, cfg.set_hidden, emb, gen)
                else:
                    kc = 1 if k == 2 else k
                    n_dir = self.r * self.r if cfg.sign_invariant else self.r * kc
                    self.dir_head = nn.Parameter(_orthogonal_(torch.empty(emb, n_dir), gen))
            if input_basis is not None and cfg.projects_inputs:
                self._start_projections(input_basis)
            n_blocks = self.n_slots + int(cfg.class_direction)
            self.w_gain = nn.Parameter(torch.ones(n_blocks))
        if cfg.func_branch:
            c, h, w = cfg.input_shape
            u = torch.rand(cfg.n_probes, c, h, w, generator=gen) * 0.9 + 0.05
            if probe_images is not None and len(probe_images):
                if tuple(probe_images.shape[1:]) != (c, h, w):
                    raise ParamsimError(
                        f"probe start images have shape {tuple(probe_images.shape[1:])}; "
                        f"this LPS model reads {(c, h, w)}"
                    )
                n_img = min(len(probe_images), cfg.n_probes)  # not `k`: the output count
                # inside (0, 1), so the sigmoid's inverse is finite and its slope not vanishing
                u[:n_img] = probe_images[:n_img].to(u.dtype).clamp(PROBE_MARGIN, 1 - PROBE_MARGIN)
            self.probes_raw = nn.Parameter(torch.log(u / (1 - u)))
            p = cfg.n_probes
            if cfg.probe_logits and cfg.set_readout:
                self.logit_set = SetReadout(p, cfg.set_hidden, emb, gen)
            elif cfg.probe_logits:
                kl = p * p if cfg.probe_sign_invariant else (p if k == 2 else p * k)
                self.logit_head = nn.Parameter(_orthogonal_(torch.empty(emb, kl), gen))
            if cfg.probe_gram:
                self.pgram_head = nn.Parameter(
                    _orthogonal_(torch.empty(emb, p * (p + 1) // 2), gen)
                )
            if cfg.probe_units:
                self.unit_set = UnitSetReadout(p, cfg.set_hidden, emb, gen)
            n_f = int(cfg.probe_logits) + int(cfg.probe_gram) + int(cfg.probe_units)
            self.f_gain = nn.Parameter(torch.ones(n_f))
        self.branch_gain = nn.Parameter(torch.ones(2))

    @torch.no_grad()
    def _start_projections(self, basis: torch.Tensor) -> None:
        if basis.shape[0] != self.d or basis.shape[1] < self.r:
            raise ParamsimError(
                f"input basis is {tuple(basis.shape)}; this LPS model needs ({self.d}, >= "
                f"{self.r}): one row per input and the bias, a column per kept direction"
            )
        start = basis[:, : self.r].to(torch.float32)
        self.started_on_data = True
        if hasattr(self, "U"):
            self.U.data[:] = start
        if hasattr(self, "V"):
            self.V.data[:] = start

    # ------------------------------------------------------------------ inputs
    @property
    def probes(self) -> torch.Tensor:
        """Probe inputs in the data range [0, 1]."""
        return torch.sigmoid(self.probes_raw)

    def can_read_weights(self, template: Network) -> bool:
        return template.kind == "mlp" and all(lay.kind == "linear" for lay in template.layers)

    def check(self, nets: Sequence[Network]) -> str | None:
        """Why these networks cannot be embedded, or None."""
        cfg = self.config
        for n in nets:
            if n.n_outputs != cfg.n_outputs:
                return f"model has {n.n_outputs} outputs; this LPS model reads {cfg.n_outputs}"
            if tuple(n.input_shape) != cfg.input_shape:
                return (
                    f"model input shape {tuple(n.input_shape)} differs from the LPS model's "
                    f"{cfg.input_shape}; fit LPS on models of this input"
                )
            if not cfg.func_branch and not self.can_read_weights(n):
                return "the weight-only LPS variant reads MLPs only; use a variant with probes"
        return None

    # ------------------------------------------------------------------ branches
    def _chain(self, weights, biases) -> list[torch.Tensor]:
        """Chain representation X_l (M, d(+1), units_l) after every layer."""
        cfg = self.config
        w1, b1 = weights[0], biases[0]
        if cfg.flat_head:  # the authors' row normalisation
            # rows of W^T, i.e. each input unit's outgoing weights
            weights = [w / w.norm(dim=-2, keepdim=True).clamp_min(EPS) for w in weights]
            w1 = weights[0]
        x = w1.transpose(1, 2)  # (M, d, h1)
        if cfg.bias:
            x = torch.cat([x, b1[:, None, :]], dim=1)
        out = [x]
        for w, b in zip(weights[1:], biases[1:], strict=True):
            x = x @ w.transpose(1, 2)
            if cfg.bias:
                x = torch.cat([x[:, :-1], x[:, -1:] + b[:, None, :]], dim=1)
            out.append(x)
        return out

    def _weight_branch(self, weights, biases) -> torch.Tensor:
        cfg = self.config
        xs = self._chain(weights, biases)
        hidden, final = xs[:-1], xs[-1]
        m = final.shape[0]
        blocks: list[torch.Tensor] = []
        if cfg.second_order:
            # slot s < n_slots - 1: hidden depth s + 1; the last slot: the outputs
            if cfg.chain:
                pairs = [(i, x, True) for i, x in enumerate(hidden[: cfg.max_hidden_depths])]
                pairs.append((self.n_slots - 1, final, False))
            else:
                pairs = [(0, hidden[0], True)] if hidden else [(0, final, False)]
            blocks = [torch.zeros(m, cfg.emb_dim, dtype=final.dtype, device=final.device)]
            blocks = blocks * self.n_slots
            for s, x, is_hidden in pairs:
                if cfg.unit_columns and is_hidden:
                    x = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
                z = self.U[s].T @ x  # (M, r, units): never the d x d Gram
                v = (z @ z.transpose(1, 2)).flatten(1)
                if cfg.signed_sqrt:
                    v = _signed_sqrt(v)
                # unit-normalised then mapped, with the division after the map (fewer values)
                norm = v.norm(dim=1, keepdim=True).clamp_min(EPS)
                blocks[s] = (v @ self.gram_heads[s].T) / norm
        if cfg.class_direction and cfg.set_readout:
            blocks.append(self.dir_set(self.V.T @ final))
        elif cfg.class_direction:
            k = final.shape[2]
            if k == 2:
                c = (final[:, :, 1] - final[:, :, 0])[:, :, None]
            else:
                c = final - final.mean(dim=2, keepdim=True)
            z = self.V.T @ c  # (M, r, 1 or k)
            if cfg.sign_invariant:
                v = (z @ z.transpose(1, 2)).flatten(1)
            else:
                v = z.transpose(1, 2).reshape(m, -1)
            blocks.append(_unit(v) @ self.dir_head.T)
        stacked = torch.stack(blocks, 1)  # (M, blocks, emb)
        return (stacked * self.w_gain[None, :, None]).sum(1)

    def _func_branch(self, stack: NetworkStack) -> torch.Tensor:
        cfg = self.config
        logits, hidden = stack.forward(self.probes, return_hidden=True)
        blocks = []
        if cfg.probe_logits and cfg.set_readout:
            blocks.append(self.logit_set(logits))  # (M, P, K): one column per output unit
        elif cfg.probe_logits:
            if logits.shape[-1] == 2:
                f = logits[..., 1] - logits[..., 0]
            else:
                f = (logits - logits.mean(-1, keepdim=True)).flatten(1)
            if cfg.probe_sign_invariant:  # (M, P, P): which output holds a class no longer matters
                z = f.reshape(f.shape[0], logits.shape[1], -1)
                f = (z @ z.transpose(1, 2)).flatten(1)
            blocks.append(_unit(f) @ self.logit_head.T)
        if cfg.probe_gram:
            h = hidden[-1] if hidden else logits
            m, p = h.shape[:2]
            if h.dim() == 5:  # (M, P, C, H, W): a channel is a unit seen at every position
                h = h.transpose(1, 2).reshape(m, h.shape[2], -1)  # (M, C, P*H*W)
                h = h / h.norm(dim=-1, keepdim=True).clamp_min(EPS)
                h = h.reshape(m, -1, p, h.shape[-1] // p).permute(0, 2, 1, 3).reshape(m, p, -1)
            else:  # (M, P, units): normalise each unit over the probes
                h = h / h.norm(dim=1, keepdim=True).clamp_min(EPS)
            h = h - h.mean(dim=1, keepdim=True)
            g = h @ h.transpose(1, 2)
            blocks.append(_unit(_triu_vec(g)) @ self.pgram_head.T)
        if cfg.probe_units:
            h = hidden[-1] if hidden else logits
            if h.dim() == 5:  # (M, P, C, H, W): a channel's response is its mean over positions
                h = h.mean(dim=(-2, -1))
            blocks.append(self.unit_set(h))
        stacked = torch.stack(blocks, 1)
        return (stacked * self.f_gain[None, :, None]).sum(1)

    # ------------------------------------------------------------------ forward
    def forward_parts(
        self, template: Network, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Unit-length weight-branch and function-branch embeddings (M, emb_dim) of stacked
        networks sharing `template`'s architecture; None for a branch that cannot read them."""
        cfg = self.config
        ew = ef = None
        if cfg.weight_branch and self.can_read_weights(template):
            ew = _unit(self._weight_branch(weights, biases))
        if cfg.func_branch:
            stack = NetworkStack(template, tuple(weights), tuple(biases))
            ef = _unit(self._func_branch(stack))
        return ew, ef

    def combine(
        self,
        ew: torch.Tensor | None,
        ef: torch.Tensor | None,
        keep_weight_branch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model embedding (M, out_dim) from the branch parts; see `LPSConfig.combine`.

        A missing part (a CNN's weight branch) counts as zeros, so under "concat" a CNN and an
        MLP are compared by their function parts alone.
        """
        cfg = self.config
        some = ew if ew is not None else ef
        assert some is not None
        zeros = torch.zeros_like(some)
        if ew is not None and keep_weight_branch is not None:
            ew = ew * keep_weight_branch[:, None]
        parts = []
        if cfg.weight_branch:
            parts.append(self.branch_gain[0] * (ew if ew is not None else zeros))
        if cfg.func_branch:
            parts.append(self.branch_gain[1] * (ef if ef is not None else zeros))
        out = torch.cat(parts, dim=1) if cfg.combine == "concat" else sum(parts)
        return _unit(out)

    def forward_stack(
        self,
        template: Network,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        keep_weight_branch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings (M, out_dim) of stacked networks sharing `template`'s architecture.

        `keep_weight_branch` (M,) of 0/1 drops the weight branch per model (training only).
        """
        ew, ef = self.forward_parts(template, weights, biases)
        return self.combine(ew, ef, keep_weight_branch)

    def forward(self, nets: Sequence[Network], batch_size: int | None = None) -> torch.Tensor:
        """Embeddings (len(nets), out_dim), in the order given; models of any architecture.

        The stacks move to this network's device, the embeddings come back on the CPU.
        `batch_size` models are stacked at a time: by default CPU_BATCH on the CPU, where a
        batch's Grams then stay in cache, and GPU_BATCH on a GPU."""
        why = self.check(nets)
        if why:
            raise ParamsimError(why)
        dev = self.branch_gain.device
        if batch_size is None:
            batch_size = CPU_BATCH if dev.type == "cpu" else GPU_BATCH
        out = torch.empty(len(nets), self.config.out_dim)
        for idx in group_by_signature(nets):
            for start in range(0, len(idx), batch_size):
                part = idx[start : start + batch_size]
                stack = NetworkStack.from_networks([nets[i] for i in part])
                ws = [w.to(dev) for w in stack.weights]
                bs = [b.to(dev) for b in stack.biases]
                out[part] = self.forward_stack(stack.template, ws, bs).cpu()
        return out

    @torch.no_grad()
    def embed(self, nets: Sequence[Network], batch_size: int | None = None) -> np.ndarray:
        """float32 (n, out_dim) unit vectors; cosine similarity is their dot product."""
        was = self.training
        self.eval()
        try:
            return self.forward(nets, batch_size).numpy().astype(np.float32)
        finally:
            self.train(was)

    def n_head_params(self) -> int:
        """Parameters of the learned map (the probes excluded)."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "probes_raw")
