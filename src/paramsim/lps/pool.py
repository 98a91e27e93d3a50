"""The training pool of LPS: models grouped by architecture as stacked tensors, the
symmetry-respecting augmentation drawn on them, and task-balanced batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from paramsim.lps.config import FitConfig
from paramsim.lps.model import LPSNet
from paramsim.weights import Network, NetworkStack, group_by_signature


@dataclass
class StackGroup:
    template: Network
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    members: np.ndarray  # pool indices of this group's models, in stack order


@dataclass
class TrainingPool:
    """Networks stacked per architecture so a batch is a few batched forward passes."""

    groups: list[StackGroup]
    where: np.ndarray  # (n, 2): group index and row within the group
    labels: np.ndarray

    @classmethod
    def build(cls, nets: Sequence[Network], labels: Sequence[int]) -> TrainingPool:
        groups = []
        where = np.zeros((len(nets), 2), dtype=np.int64)
        for g, idx in enumerate(group_by_signature(nets)):
            st = NetworkStack.from_networks([nets[i] for i in idx])
            groups.append(StackGroup(st.template, st.weights, st.biases, np.asarray(idx)))
            where[idx, 0] = g
            where[idx, 1] = np.arange(len(idx))
        return cls(groups, where, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> TrainingPool:
        """The same pool with its stacked tensors on `device` (itself when already there)."""
        groups = [
            StackGroup(
                g.template,
                tuple(w.to(device) for w in g.weights),
                tuple(b.to(device) for b in g.biases),
                g.members,
            )
            for g in self.groups
        ]
        return TrainingPool(groups, self.where, self.labels)

    @property
    def kinds(self) -> np.ndarray:
        """0 for an MLP, 1 for a CNN, per model."""
        kind = np.asarray([int(g.template.kind == "cnn") for g in self.groups])
        return kind[self.where[:, 0]]


def augment(
    g: StackGroup, rows: torch.Tensor, cfg: FitConfig, gen: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Selected models with ReLU rescaling of hidden units and small weight noise.

    Both keep the function (rescaling exactly, noise nearly), so the metric should ignore
    them; hidden permutations are not drawn because the network is exactly invariant to them.
    """
    ws = [w[rows] for w in g.weights]
    bs = [b[rows] for b in g.biases]
    m = len(rows)
    if cfg.rescale_aug > 0:
        for i in range(len(ws) - 1):
            if "relu" not in g.template.layers[i].post:
                continue
            units = ws[i].shape[1]
            a = torch.exp((torch.rand(m, units, generator=gen) * 2 - 1) * cfg.rescale_aug)
            a = a.to(ws[i].device)  # drawn on the CPU: the same draws on every device
            nxt = ws[i + 1]
            if nxt.shape[2] % units:  # the next layer does not read these units one by one
                continue
            ws[i] = ws[i] * a.reshape(m, units, *([1] * (ws[i].dim() - 2)))
            bs[i] = bs[i] * a
            # (M, out, units, rest): rest is k*k after a conv, H*W after conv -> flatten
            view = nxt.reshape(m, nxt.shape[1], units, -1) / a[:, None, :, None]
            ws[i + 1] = view.reshape(nxt.shape)
    if cfg.noise_aug > 0:
        for i, w in enumerate(ws):
            std = w.flatten(1).std(dim=1).reshape(m, *([1] * (w.dim() - 1)))
            noise = torch.randn(w.shape, generator=gen).to(w.device)
            ws[i] = w + cfg.noise_aug * std * noise
    return ws, bs


def embed_pool(
    net: LPSNet,
    pool: TrainingPool,
    idx: np.ndarray,
    aug: FitConfig | None,
    gen: torch.Generator,
    func_parts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings of pool models `idx` (in that order), augmented when `aug` is given, and with
    `func_parts` also their function-branch parts alone (else None)."""
    dev = net.branch_gain.device
    out = torch.zeros(len(idx), net.config.out_dim, device=dev)
    fparts = torch.zeros(len(idx), net.config.emb_dim, device=dev) if func_parts else None
    gi = pool.where[idx, 0]
    for g in np.unique(gi):
        pos = np.flatnonzero(gi == g)
        rows = torch.as_tensor(pool.where[idx[pos], 1], device=dev)
        grp = pool.groups[int(g)]
        keep = None
        if aug is not None:
            ws, bs = augment(grp, rows, aug, gen)
            if aug.branch_dropout > 0 and net.config.func_branch:
                keep = (torch.rand(len(rows), generator=gen) >= aug.branch_dropout).float()
                keep = keep.to(dev)
        else:
            ws = [w[rows] for w in grp.weights]
            bs = [b[rows] for b in grp.biases]
        ew, ef = net.forward_parts(grp.template, ws, bs)
        at = (torch.as_tensor(pos, device=dev),)
        out = out.index_put(at, net.combine(ew, ef, keep))
        if fparts is not None and ef is not None:
            fparts = fparts.index_put(at, ef)
    return out, fparts


def task_batches(
    labels: np.ndarray,
    cfg: FitConfig,
    rng: np.random.Generator,
    kinds: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Task-balanced batches: `tasks_per_batch` tasks with `models_per_task` models each, so
    every anchor has positives; one epoch sees every model about once.

    With `kinds` (an architecture kind per model, e.g. MLP 0 / CNN 1) and
    `cfg.balance_kinds`, a task with models of several kinds gets them in turn, so most
    batches hold same-task pairs across kinds: the pairs that align a CNN, read by its
    function part alone, with MLPs (in a zoo with one CNN in five, random picks rarely do).
    """
    by_task: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        by_task.setdefault(int(t), []).append(i)
    queues = {t: list(rng.permutation(v)) for t, v in by_task.items()}
    by_kind: dict[tuple[int, int], list[int]] = {}
    if kinds is not None and cfg.balance_kinds and len(np.unique(kinds)) > 1:
        for i, (t, k) in enumerate(zip(labels, kinds, strict=True)):
            by_kind.setdefault((int(t), int(k)), []).append(i)
    kind_queues = {key: list(rng.permutation(v)) for key, v in by_kind.items()}
    task_kinds: dict[int, list[int]] = {}
    for t, k in sorted(by_kind):
        task_kinds.setdefault(t, []).append(k)
    tasks = [t for t, v in by_task.items() if len(v) >= 2]
    n_batches = max(cfg.min_batches, len(labels) // (cfg.tasks_per_batch * cfg.models_per_task))
    out = []
    for _ in range(n_batches):
        chosen = rng.choice(tasks, size=min(cfg.tasks_per_batch, len(tasks)), replace=False)
        batch = []
        for t in chosen:
            n_take = min(cfg.models_per_task, len(by_task[int(t)]))
            ks = task_kinds.get(int(t), [])
            if len(ks) > 1:  # alternate kinds, starting from a random one
                start = int(rng.integers(len(ks)))
                for i in range(n_take):
                    q = kind_queues[(int(t), ks[(start + i) % len(ks)])]
                    if not q:
                        q.extend(rng.permutation(by_kind[(int(t), ks[(start + i) % len(ks)])]))
                    batch.append(q.pop())
                continue
            q = queues[int(t)]
            if len(q) < cfg.models_per_task:
                q.extend(rng.permutation(by_task[int(t)]))
            batch += [q.pop() for _ in range(n_take)]
        out.append(np.asarray(batch))
    return out
