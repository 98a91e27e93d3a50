"""Evaluate source selection for few-shot transfer on a zoo.

For every target task of the zoo in turn, K shots per class, `repeats` random draws of the
shots:

- probe: a fresh model of the zoo's architecture trained on the 2K examples (this is also the
  *scratch* baseline: its test accuracy);
- chosen: a stored model of another task picked by similarity to the probe, fine-tuned on the
  same 2K examples. Two selection rules are scored from the same fine-tuned sources (a lookup,
  no extra training): "model" takes the single most similar model; "task" ranks the source
  tasks by the mean similarity of the probe to that task's models (or the mean of its
  `select_top` most similar ones), then takes the most similar model of the best task;
- random: the expected accuracy of fine-tuning a source drawn uniformly from the other tasks
  (the exact mean over all of them, no sampling noise);
- oracle: the best source in hindsight (every source of another task is fine-tuned, as one
  stacked training run).

Fine-tuning keeps the whole source network, output layer included (a source's output unit k
keeps standing for its own task's side k; the target's label k trains unit k), and trains
every layer with full-batch Adam for a few dozen steps. `finetune="head"` retrains only the
last layer instead. Probe training and fine-tuning are seeded: the same settings give the
same numbers.

Learned methods must not have seen the target task: by default they are fitted once per
fold of tasks on the other folds (`folds`), and a saved model is only evaluated on the tasks
it did not train or early-stop on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.use._common import Similarity, canonical_task, cross_similarity, fit_excluding
from paramsim.use.transfer.config import SELECT_RULES, TransferConfig
from paramsim.use.transfer.library import majority_arch
from paramsim.use.transfer.selection import choose_source
from paramsim.use.transfer.shots import Instance, fold_of, kshot, probe_seed
from paramsim.use.transfer.stats import bootstrap_ci, per_task
from paramsim.zoo.finetune import SourceBank, test_accuracy, train_probes

ProgressFn = Callable[[str], None]


def _probe_similarity(method, instances, rows, networks, cfg) -> np.ndarray:
    """(len(rows), n_models): similarity to each draw's probes, averaged over its probes."""
    queries = [p for j in rows for p in instances[j].probes]
    S = cross_similarity(method, queries, networks, Context(seed=cfg.seed))
    return S.reshape(len(rows), cfg.probes, -1).mean(axis=1)


def evaluate_transfer(
    zoo,
    similarities: Mapping[str, Similarity],
    config: TransferConfig | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Scratch, random, chosen and oracle accuracies per target task, shots and method."""
    from scipy.stats import spearmanr

    from paramsim.weights import from_state_dict

    cfg = config or TransferConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    dataset = zoo.dataset()
    names = [t.name for t in zoo.tasks]
    labels = zoo.task_ids
    targets = list(range(len(names)))
    if cfg.targets is not None:
        unknown = set(cfg.targets) - set(names)
        if unknown:
            raise ParamsimError(f"unknown target tasks {sorted(unknown)}; the zoo has {names}")
        targets = [t for t in targets if names[t] in cfg.targets]
    if len(zoo.tasks) < 2:
        raise ParamsimError("transfer needs a zoo with at least two tasks")
    arch = majority_arch(zoo)
    tests = {t: zoo.tasks[t].test_data(dataset) for t in targets}

    # 1. K-shot draws and probes (one stacked run per K)
    instances: list[Instance] = []
    for k in cfg.shots:
        batch = []
        for t in targets:
            for r in range(cfg.repeats):
                x, y = kshot(zoo.tasks[t], dataset, k, (cfg.seed, k, r, t))
                batch.append(Instance(t, k, r, x, y))
        P = cfg.probes
        seeds = [probe_seed(cfg.seed, k, b.repeat, b.task_id, p) for b in batch for p in range(P)]
        stack = train_probes(
            arch,
            [(zoo.tasks[b.task_id], b.x, b.y) for b in batch for _ in range(P)],
            seeds,
            cfg.probe_lr,
            cfg.probe_steps,
            cfg.probe_init_scale,
        )
        acc = test_accuracy(stack, [tests[b.task_id] for b in batch for _ in range(P)])
        for i, b in enumerate(batch):
            b.scratch = float(acc[i * P : (i + 1) * P].mean())
            b.probes = [from_state_dict(stack.state_dict(i * P + p), arch) for p in range(P)]
        instances += batch
    say(f"trained {len(instances) * cfg.probes} probe models")

    # 2. every source of another task fine-tuned on every instance (method independent)
    bank = SourceBank(zoo)
    pairs = [
        (m, j)
        for j, inst in enumerate(instances)
        for m in range(len(zoo))
        if labels[m] != inst.task_id
    ]
    t0 = time.perf_counter()
    accs = bank.finetune(
        pairs,
        [(inst.x, inst.y) for inst in instances],
        [tests[inst.task_id] for inst in instances],
        cfg.finetune_lr,
        cfg.finetune_steps,
        cfg.finetune == "head",
        cfg.head == "reset",
        cfg.chunk,
    )
    ft = np.full((len(instances), len(zoo)), np.nan)
    for (m, j), a in zip(pairs, accs, strict=True):
        ft[j, m] = a
    finetune_seconds = time.perf_counter() - t0
    say(f"fine-tuned {len(pairs)} source/target pairs in {finetune_seconds:.1f} s")

    # 3. per method: rank sources by similarity to each probe
    networks = zoo.networks()
    model_tasks = [zoo.tasks[int(t)] for t in labels]
    fold = fold_of(names, cfg.folds, cfg.seed)
    methods: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, sim in similarities.items():
        t0 = time.perf_counter()
        S = np.full((len(instances), len(zoo)), np.nan)
        try:
            if sim.learned and sim.seen_tasks is None:  # cross-fit per fold
                for f in range(cfg.folds):
                    held = {n for n, g in fold.items() if g == f}
                    rows = [j for j, inst in enumerate(instances) if names[inst.task_id] in held]
                    if not rows:
                        continue
                    say(f"{name}: fitting fold {f + 1}/{cfg.folds} without {len(held)} tasks")
                    fitted = fit_excluding(sim, networks, model_tasks, held, cfg.seed + f)
                    S[rows] = _probe_similarity(fitted.method, instances, rows, networks, cfg)
            else:
                seen = sim.seen_tasks or frozenset()
                rows = [
                    j
                    for j, inst in enumerate(instances)
                    if canonical_task(names[inst.task_id]) not in seen
                ]
                if not rows:
                    raise ParamsimError(
                        f"{sim.name} trained on every target task ({sim.source}); fit it on a "
                        "subset of tasks or use --method lps, which is fitted per fold"
                    )
                S[rows] = _probe_similarity(sim.method, instances, rows, networks, cfg)
        except ParamsimError:
            raise
        except Exception as exc:  # a failing method is reported, not fatal
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            say(f"{name}: skipped ({skipped[name]})")
            continue
        methods[name] = {"shots": _score_method(instances, S, ft, labels, names, cfg, spearmanr)}
        methods[name]["seconds"] = time.perf_counter() - t0
        methods[name]["source"] = (
            sim.source
            if not (sim.learned and sim.seen_tasks is None)
            else f"fitted per fold ({cfg.folds} folds)"
        )
        say(f"{name}: done in {methods[name]['seconds']:.1f} s")

    return {
        "zoo": str(getattr(zoo, "path", "")),
        "n_models": len(zoo),
        "n_tasks": len(names),
        "tasks": names,
        "config": cfg.to_dict(),
        "probe_arch": arch.label,
        "folds": {n: int(g) for n, g in fold.items()},
        "instances": [
            {"task": names[i.task_id], "shots": i.shots, "repeat": i.repeat, "scratch": i.scratch}
            for i in instances
        ],
        "baselines": _baselines(instances, ft, names, cfg),
        "methods": methods,
        "skipped": skipped,
        "finetune_seconds": finetune_seconds,
        "total_seconds": time.perf_counter() - started,
    }


def _baselines(instances, ft, names, cfg) -> dict[str, Any]:
    scratch = np.array([i.scratch for i in instances])
    random_ = np.nanmean(ft, axis=1)
    oracle = np.nanmax(ft, axis=1)
    out = {}
    for k in cfg.shots:
        per = {
            "scratch": per_task(instances, scratch, k),
            "random": per_task(instances, random_, k),
            "oracle": per_task(instances, oracle, k),
        }
        out[str(k)] = {
            key: {
                "mean": float(np.mean(list(v.values()))),
                "per_task": {names[t]: a for t, a in v.items()},
            }
            for key, v in per.items()
        }
    return out


def _score_method(instances, S, ft, labels, names, cfg, spearmanr) -> dict[str, Any]:
    """Per K: both selection rules scored from the same fine-tuned sources.

    The top-level chosen/gain/share/chosen_sources are those of the primary rule
    (`cfg.select`); `rules` holds every rule's, so the two can be compared on equal terms.
    """
    chosen = {rule: np.full(len(instances), np.nan) for rule in SELECT_RULES}
    chosen_id = {rule: np.full(len(instances), -1) for rule in SELECT_RULES}
    rho = np.full(len(instances), np.nan)
    random_ = np.nanmean(ft, axis=1)
    oracle = np.nanmax(ft, axis=1)
    for j, inst in enumerate(instances):
        s = S[j]
        ok = np.isfinite(s) & (labels != inst.task_id) & np.isfinite(ft[j])
        if not ok.any():
            continue
        for rule in SELECT_RULES:
            best = choose_source(s, labels, ok, rule, cfg.select_top)
            chosen_id[rule][j] = best
            chosen[rule][j] = ft[j, best]
        cand = np.flatnonzero(ok)
        if np.ptp(s[cand]) > 0 and np.ptp(ft[j, cand]) > 0:
            rho[j] = spearmanr(s[cand], ft[j, cand]).statistic
    out: dict[str, Any] = {}
    for k in cfg.shots:
        r = per_task(instances, random_, k)
        o = per_task(instances, oracle, k)
        rules: dict[str, Any] = {}
        for rule in SELECT_RULES:
            c = per_task(instances, chosen[rule], k)
            tasks = sorted(c)
            gain = np.array([c[t] - r[t] for t in tasks])
            headroom = np.array([o[t] - r[t] for t in tasks])
            rules[rule] = {
                "chosen": {
                    "mean": float(np.mean([c[t] for t in tasks])) if tasks else math.nan,
                    "per_task": {names[t]: c[t] for t in tasks},
                },
                "gain_over_random": bootstrap_ci(gain, cfg.seed),
                "oracle_gain_captured": float(gain.mean() / headroom.mean())
                if tasks and headroom.mean() > 0
                else math.nan,
                "chosen_sources": {
                    f"{names[inst.task_id]}#{inst.repeat}": (
                        int(chosen_id[rule][j]),
                        names[int(labels[chosen_id[rule][j]])],
                    )
                    for j, inst in enumerate(instances)
                    if inst.shots == k and chosen_id[rule][j] >= 0
                },
            }
        tasks = sorted(per_task(instances, chosen[cfg.select], k))
        rho_k = per_task(instances, rho, k)
        out[str(k)] = {
            "n_target_tasks": len(tasks),
            "select": cfg.select,
            **rules[cfg.select],
            "random_same_tasks": float(np.mean([r[t] for t in tasks])) if tasks else math.nan,
            "oracle_same_tasks": float(np.mean([o[t] for t in tasks])) if tasks else math.nan,
            "spearman": {
                "mean": float(np.nanmean(list(rho_k.values()))) if rho_k else math.nan,
                "per_task": {names[t]: v for t, v in rho_k.items()},
            },
            "rules": rules,
        }
    return out
