"""Run transferability estimators over the candidate sources of every K-shot draw.

The only data an estimator sees is what `source_outputs` returns: each candidate's
penultimate features and output probabilities on the draw's K shots per class (the same
examples the probe model is trained on). Neither the target's test split nor its
validation part goes through here; tests/use checks it with a recording fake.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from paramsim.use.transfer.estimators import ESTIMATORS
from paramsim.use.transfer.shots import Instance
from paramsim.zoo.finetune import MemoryBudget, SourceBank, family
from paramsim.zoo.trainer import StackedModels


@torch.no_grad()
def source_outputs(models: StackedModels, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features (M, n, d) and softmax outputs (M, n, Z) of every stacked source on shots x."""
    shared = x.unsqueeze(0).expand(len(models), *x.shape)
    feats = models.forward(shared, train=False, features=True)
    logits = models.forward(shared, train=False)
    return feats.double().numpy(), torch.softmax(logits.double(), -1).numpy()


def estimator_scores(
    bank: SourceBank,
    candidates: np.ndarray,
    instances: Sequence[Instance],
    names: Sequence[str],
    budget: MemoryBudget | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per estimator, (n_instances, n_models) scores where `candidates[j, m]`, NaN elsewhere;
    and the seconds spent in forward passes and in each estimator."""
    budget = budget or MemoryBudget()
    n_inst, n_models = candidates.shape
    scores = {name: np.full((n_inst, n_models), np.nan) for name in names}
    seconds = {"forward": 0.0, **{name: 0.0 for name in names}}
    used = np.flatnonzero(candidates.any(0))
    by_family: dict[tuple, list[int]] = {}
    for m in used:
        by_family.setdefault(family(bank.records[int(m)].arch), []).append(int(m))
    for ids in by_family.values():
        batch = max(len(inst.y) for inst in instances)
        size = budget.models(bank.widest(ids), batch, len(ids))
        for start in range(0, len(ids), size):
            part = np.asarray(ids[start : start + size])
            models = bank.stack(part.tolist(), lr=0.0, steps=0)
            for j, inst in enumerate(instances):
                keep = candidates[j, part]
                if not keep.any():
                    continue
                t0 = time.perf_counter()
                feats, probs = source_outputs(models, inst.x)
                seconds["forward"] += time.perf_counter() - t0
                y = inst.y.numpy()
                for name in names:
                    t0 = time.perf_counter()
                    got = ESTIMATORS[name].score(feats[keep], probs[keep], y)
                    scores[name][j, part[keep]] = got
                    seconds[name] += time.perf_counter() - t0
            del models
    return scores, seconds
