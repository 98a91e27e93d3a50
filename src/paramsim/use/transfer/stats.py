"""Statistics of a transfer evaluation: per-task means and intervals over target tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from paramsim.use.transfer.shots import Instance


def per_task(instances: Sequence[Instance], values: np.ndarray, k: int) -> dict[int, float]:
    """Mean over repeats, per target task, for K = k."""
    out: dict[int, list[float]] = {}
    for inst, v in zip(instances, values, strict=True):
        if inst.shots == k and np.isfinite(v):
            out.setdefault(inst.task_id, []).append(float(v))
    return {t: float(np.mean(v)) for t, v in out.items()}


def bootstrap_ci(gains: np.ndarray, seed: int, n_boot: int = 10000) -> dict[str, float]:
    """Mean, 95% bootstrap CI over tasks and the t-interval of a per-task gain. One task
    gives no interval (NaN bounds), not a zero-width one that would look certain."""
    from scipy import stats

    g = gains[np.isfinite(gains)]
    if len(g) < 2:
        nan, mean = math.nan, (float(g[0]) if len(g) else math.nan)
        return {"mean": mean, "lo": nan, "hi": nan, "t_lo": nan, "t_hi": nan, "n": len(g)}
    rng = np.random.default_rng(seed)
    boots = rng.choice(g, (n_boot, len(g)), replace=True).mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    sd = g.std(ddof=1)
    half = stats.t.ppf(0.975, len(g) - 1) * sd / math.sqrt(len(g)) if sd > 0 else 0.0
    return {
        "mean": float(g.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "t_lo": float(g.mean() - half),
        "t_hi": float(g.mean() + half),
        "n": int(len(g)),
    }
