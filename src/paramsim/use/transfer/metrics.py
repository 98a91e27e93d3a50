"""How good a selection rule is, from its scores and every candidate's fine-tuned accuracy.

Per draw of K shots every candidate source (a model of another task) was fine-tuned and
tested, so each rule's pick is a lookup. Per rule and K:

- chosen: test accuracy of the pick. The "model" rule picks the top-scored candidate, the
  "task" rule the top-scored candidate of the task with the best mean score; when several
  share the top (k-NN accuracies often do) the chosen accuracy is their mean, the expected
  value of picking one of them at random, so no index order decides;
- gain over random (bootstrap CI over target tasks) and its share of the oracle's gain
  (best candidate by test accuracy) and of the validation oracle's gain (best by accuracy
  on the target's held-out training examples, reported on the test split: an attainable
  ceiling);
- top-1 regret: oracle minus chosen;
- weighted Kendall tau between score and fine-tuned accuracy over the candidates (scipy's
  `weightedtau` with its defaults, as the LogME, SFDA and Model Spider evaluations call it:
  hyperbolic weights on rank, averaged over the ranking by score and the one by accuracy),
  and Spearman's rho, both averaged over draws then tasks. A rule whose scores are all equal
  on a draw ranks nothing: both count as 0 there, not as missing (which would average such
  a rule over fewer, perhaps easier, draws than the others). A draw whose candidates all
  fine-tune to one accuracy has nothing to rank and is left out for every rule alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from paramsim.use.transfer.config import SELECT_RULES, TransferConfig
from paramsim.use.transfer.selection import task_scores
from paramsim.use.transfer.shots import Instance
from paramsim.use.transfer.stats import bootstrap_ci, per_task


def top_candidates(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Indices of the candidates that share the highest score."""
    cand = np.flatnonzero(candidates)
    best = np.max(scores[cand])
    return cand[scores[cand] == best]


def top_task_candidates(
    scores: np.ndarray, labels: np.ndarray, candidates: np.ndarray, top: int = 0
) -> list[np.ndarray]:
    """The "task" rule's picks, one array per task tied at the highest mean score
    (`selection.task_scores`): that task's top-scored candidates. A random pick is one of
    those tasks, then one of its top candidates."""
    per_task = task_scores(scores, labels, candidates, top)
    best = max(per_task.values())
    tied = [t for t, v in per_task.items() if v == best]
    return [top_candidates(scores, candidates & (labels == t)) for t in tied]


def validation_pick(ft: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Per draw: test accuracy of the candidate best on the validation part (ties: mean)."""
    out = np.full(len(ft), np.nan)
    for j in range(len(ft)):
        ok = np.isfinite(val[j]) & np.isfinite(ft[j])
        if ok.any():
            out[j] = float(np.mean(ft[j, top_candidates(val[j], ok)]))
    return out


def _mean_over(per: Mapping[int, float], tasks: Sequence[int]) -> float:
    return float(np.mean([per[t] for t in tasks])) if tasks else math.nan


def baselines(
    instances: Sequence[Instance],
    ft: np.ndarray,
    val: np.ndarray,
    names: Sequence[str],
    cfg: TransferConfig,
) -> dict[str, Any]:
    """Scratch, random, oracle and validation-oracle accuracies per K, per target task."""
    columns = {
        "scratch": np.array([i.scratch for i in instances]),
        "random": np.nanmean(ft, axis=1),
        "oracle": np.nanmax(ft, axis=1),
        "val_oracle": validation_pick(ft, val),
    }
    out = {}
    for k in cfg.shots:
        out[str(k)] = {}
        for key, values in columns.items():
            v = per_task(instances, values, k)
            out[str(k)][key] = {
                "mean": float(np.mean(list(v.values()))) if v else math.nan,
                "per_task": {names[t]: a for t, a in v.items()},
            }
    return out


def score_rule(
    instances: Sequence[Instance],
    S: np.ndarray,
    ft: np.ndarray,
    val: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    cfg: TransferConfig,
    model_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per K: both selection rules ("model", "task") scored from the same fine-tuned sources,
    with the field's metrics. The top-level chosen/gain/share/chosen_sources are those of the
    primary rule (`cfg.select`); `rules` holds every rule's. Chosen sources are named by
    `model_ids` (the zoo's ids of the columns; default: the column index)."""
    from scipy.stats import spearmanr, weightedtau

    n = len(instances)
    ids = np.arange(len(labels)) if model_ids is None else np.asarray(model_ids)
    chosen = {rule: np.full(n, np.nan) for rule in SELECT_RULES}
    chosen_id = {rule: np.full(n, -1) for rule in SELECT_RULES}
    rho, tau = np.full(n, np.nan), np.full(n, np.nan)
    random_ = np.nanmean(ft, axis=1)
    oracle = np.nanmax(ft, axis=1)
    val_oracle = validation_pick(ft, val)
    for j, inst in enumerate(instances):
        s = S[j]
        ok = np.isfinite(s) & (labels != inst.task_id) & np.isfinite(ft[j])
        if not ok.any():
            continue
        top = top_candidates(s, ok)
        chosen["model"][j] = float(np.mean(ft[j, top]))
        chosen_id["model"][j] = int(top[0])
        picks = top_task_candidates(s, labels, ok, cfg.select_top)
        chosen_id["task"][j] = int(picks[0][0])
        chosen["task"][j] = float(np.mean([np.mean(ft[j, p]) for p in picks]))
        cand = np.flatnonzero(ok)
        if np.ptp(ft[j, cand]) == 0:
            continue  # every candidate fine-tunes alike: nothing to rank, for any rule
        if np.ptp(s[cand]) == 0:
            rho[j] = tau[j] = 0.0  # the rule ranks nothing
        else:
            rho[j] = spearmanr(s[cand], ft[j, cand]).statistic
            tau[j] = weightedtau(s[cand], ft[j, cand]).statistic
    out: dict[str, Any] = {}
    for k in cfg.shots:
        r = per_task(instances, random_, k)
        o = per_task(instances, oracle, k)
        vo = per_task(instances, val_oracle, k)
        rules: dict[str, Any] = {}
        for rule in SELECT_RULES:
            c = per_task(instances, chosen[rule], k)
            tasks = sorted(c)
            gain = np.array([c[t] - r[t] for t in tasks])
            headroom = _mean_over(o, tasks) - _mean_over(r, tasks)
            val_tasks = [t for t in tasks if t in vo]
            val_headroom = _mean_over(vo, val_tasks) - _mean_over(r, val_tasks)
            val_gain = _mean_over(c, val_tasks) - _mean_over(r, val_tasks)
            rules[rule] = {
                "chosen": {
                    "mean": _mean_over(c, tasks),
                    "per_task": {names[t]: c[t] for t in tasks},
                },
                "gain_over_random": bootstrap_ci(gain, cfg.seed),
                "oracle_gain_captured": float(gain.mean() / headroom)
                if tasks and headroom > 0
                else math.nan,
                "val_oracle_gain_captured": float(val_gain / val_headroom)
                if val_tasks and val_headroom > 0
                else math.nan,
                "regret": _mean_over(o, tasks) - _mean_over(c, tasks) if tasks else math.nan,
                "chosen_sources": {
                    f"{names[inst.task_id]}#{inst.repeat}": (
                        int(ids[chosen_id[rule][j]]),
                        names[int(labels[chosen_id[rule][j]])],
                    )
                    for j, inst in enumerate(instances)
                    if inst.shots == k and chosen_id[rule][j] >= 0
                },
            }
        tasks = sorted(per_task(instances, chosen[cfg.select], k))
        rho_k = per_task(instances, rho, k)
        tau_k = per_task(instances, tau, k)
        out[str(k)] = {
            "n_target_tasks": len(tasks),
            "select": cfg.select,
            **rules[cfg.select],
            "random_same_tasks": _mean_over(r, tasks),
            "oracle_same_tasks": _mean_over(o, tasks),
            "val_oracle_same_tasks": _mean_over(vo, [t for t in tasks if t in vo]),
            "spearman": {
                "mean": float(np.nanmean(list(rho_k.values()))) if rho_k else math.nan,
                "per_task": {names[t]: v for t, v in rho_k.items()},
            },
            "weighted_tau": {
                "mean": float(np.nanmean(list(tau_k.values()))) if tau_k else math.nan,
                "per_task": {names[t]: v for t, v in tau_k.items()},
            },
            "rules": rules,
        }
    return out


def compare_with_best_estimator(
    methods: Mapping[str, Any], kinds: Mapping[str, str], seed: int
) -> None:
    """Per K, add to every method the paired bootstrap interval of its per-task chosen
    accuracy minus that of the best estimator (by mean chosen accuracy), in place."""
    ks = {k for entry in methods.values() for k in entry["shots"]}
    for k in sorted(ks, key=int):
        ests = [n for n, kind in kinds.items() if kind == "estimator" and k in methods[n]["shots"]]
        if not ests:
            continue
        best = max(ests, key=lambda n: methods[n]["shots"][k]["chosen"]["mean"])
        ref = methods[best]["shots"][k]["chosen"]["per_task"]
        for entry in methods.values():
            if k not in entry["shots"]:
                continue
            mine = entry["shots"][k]["chosen"]["per_task"]
            tasks = sorted(set(mine) & set(ref))
            diff = np.array([mine[t] - ref[t] for t in tasks])
            entry["shots"][k]["vs_best_estimator"] = {"estimator": best, **bootstrap_ci(diff, seed)}
