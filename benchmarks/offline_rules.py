"""Score new transfer rules offline, on the fine-tunes a `paramsim transfer` run saved.

    python benchmarks/offline_rules.py RUN_DIR [--top 40]

`transfer-matrices.npz` holds every candidate's fine-tuned accuracy and every rule's scores
per draw, so a rule built from those scores can be judged without fine-tuning again. This
scores, per K, the share of the oracle's gain over random and the weighted Kendall tau of:
the run's own rules; `hist:BASE` for each similarity BASE in the run (the other folds' draws
as the past, as `paramsim transfer` does); each `hist:BASE` and similarity as a hybrid's
prefilter for every estimator (M 5, 10, 25); and the 50/50 mean of z-scores of a
weights-only rule and an estimator, over all candidates (`A&E`, an estimator's cost) and
within A's top M (`A&E@M`). Rules that beat every single rule at a K are starred. Use it on
runs whose seed is not the one you report, and add a rule it finds to `paramsim transfer`
before reporting it.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import weightedtau

from paramsim.use.transfer.estimators import ESTIMATORS
from paramsim.use.transfer.history import history_scores, zscore_rows
from paramsim.use.transfer.rules import hybrid_scores
from paramsim.zoo import open_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--top", type=int, default=40, help="rules printed, best mean share first")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    run = Path(a.run)
    doc = json.loads((run / "transfer.json").read_text())
    saved = np.load(run / "transfer-matrices.npz", allow_pickle=False)
    ft, ids = saved["finetuned"], saved["model_ids"]
    zoo = open_zoo(doc["zoo"])
    task_of = {r.id: r.task.name for r in zoo.records}
    model_tasks = [task_of[int(i)] for i in ids]
    shots = np.array([d["shots"] for d in doc["instances"]])
    targets = np.array([d["task"] for d in doc["instances"]])
    folds = np.array([doc["folds"][t] for t in targets])
    cand = np.isfinite(ft)

    def picked(s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = []
        for j in rows:
            row = np.where(cand[j] & np.isfinite(s[j]), s[j], -np.inf)
            out.append(ft[j, np.flatnonzero(row == row.max())].mean())
        return np.array(out)

    def share(s: np.ndarray, rows: np.ndarray) -> float:
        mean = np.nanmean(ft[rows], 1)
        return float((picked(s, rows) - mean).mean() / (np.nanmax(ft[rows], 1) - mean).mean())

    def tau(s: np.ndarray, rows: np.ndarray) -> float:
        got = []
        for j in rows:
            ok = cand[j] & np.isfinite(s[j])
            if np.ptp(s[j, ok]) > 0:
                got.append(weightedtau(s[j, ok], ft[j, ok]).statistic)
        return float(np.mean(got))

    def remembered(s: np.ndarray) -> np.ndarray:
        out = np.full(ft.shape, np.nan)
        for k in set(shots.tolist()):
            for f in set(folds.tolist()):
                past = np.flatnonzero((shots == k) & (folds != f))
                new = np.flatnonzero((shots == k) & (folds == f))
                out[new] = history_scores(
                    s[new],
                    cand[new],
                    ft[past],
                    cand[past],
                    targets[past],
                    model_tasks,
                    targets[new],
                )
        return out

    def top_m(s: np.ndarray, m: int) -> np.ndarray:
        keep = np.zeros(s.shape, dtype=bool)
        for j in range(len(s)):
            ok = np.flatnonzero(np.isfinite(s[j]))
            keep[j, ok[np.argsort(-s[j, ok], kind="stable")][:m]] = True
        return keep

    singles = {
        key.split(":", 1)[1]: np.where(cand, saved[key], np.nan)
        for key in saved.files
        if key.startswith("score:")
    }
    estimators = [n for n in singles if n in ESTIMATORS]
    for base in [n for n in list(singles) if n not in estimators and ":" not in n]:
        singles.setdefault(f"hist:{base}", remembered(singles[base]))
    rules = dict(singles)
    for base in [n for n in singles if n not in estimators]:
        z_base = zscore_rows(singles[base], cand)
        for est in estimators:
            rules[f"{base}&{est}"] = 0.5 * z_base + 0.5 * zscore_rows(singles[est], cand)
            for m in (5, 10, 25):
                rules[f"{base}+{est}@{m}"] = hybrid_scores(singles[base], singles[est], m)
                keep = top_m(singles[base], m)
                blend = 0.5 * zscore_rows(singles[base], keep) + 0.5 * zscore_rows(
                    singles[est], keep
                )
                # the top M first, by the blend; the rest after them, in the base's order
                rules[f"{base}&{est}@{m}"] = np.where(keep, 1e3 + blend, singles[base])
    ks = sorted(set(shots.tolist()))
    got = {
        k: {
            name: (share(s, np.flatnonzero(shots == k)), tau(s, np.flatnonzero(shots == k)))
            for name, s in rules.items()
        }
        for k in ks
    }
    best_single = {k: max(got[k][n][0] for n in singles) for k in ks}
    print(f"{run}: {len(rules)} rules; share of the oracle's gain / weighted tau per K")
    order = sorted(rules, key=lambda n: -np.mean([got[k][n][0] for k in ks]))
    shown = order[: a.top] + [n for n in singles if n not in order[: a.top]]
    for name in shown:
        cells = "  ".join(
            f"K{k} {got[k][name][0]:6.3f} / {got[k][name][1]:.3f}"
            f"{'*' if got[k][name][0] > best_single[k] else ' '}"
            for k in ks
        )
        print(f"{name:22s} {cells}")


if __name__ == "__main__":
    main()
