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
- oracle: the best source in hindsight (every source of another task is fine-tuned, in
  stacked runs sized to the memory budget);
- validation oracle: the source best on a held-out part of the target's training split
  (disjoint from the shots), reported on the test split: the ceiling a user could reach.

Besides similarity methods, the rules compared are transferability estimators (one forward
pass per candidate on the shots), hybrids (a weights-only prefilter re-ranked by an
estimator), a learned ranker on a method's embeddings and a method mixed with the outcomes of
past targets (`rules` lists the names).

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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from paramsim.data.tasks import canonical_name, task_key
from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.use._common import (
    Similarity,
    embed_or_none,
    fit_excluding,
    load_similarity,
)
from paramsim.use.transfer import estimate, history, ranker
from paramsim.use.transfer.config import MATRICES, TransferConfig
from paramsim.use.transfer.cost import measure_costs
from paramsim.use.transfer.library import majority_arch
from paramsim.use.transfer.metrics import baselines, compare_with_best_estimator, score_rule
from paramsim.use.transfer.rules import hybrid_scores, parse_rules
from paramsim.use.transfer.shots import (
    Instance,
    fold_of,
    kshot_rows,
    probe_seed,
    task_rows,
    validation_rows,
)
from paramsim.use.transfer.similarity import bounded_cross_similarity, fits
from paramsim.zoo.finetune import EvalSet, SourceBank, stack_accuracy, train_probes

ProgressFn = Callable[[str], None]


@dataclass
class _View:
    """One fitted copy of a similarity method: the draws it scores and their scores; with
    embeddings, every draw's probe embedding (n_instances, d) and every model's (n_models, d)."""

    method: Any
    rows: list[int]
    S: np.ndarray
    probe: np.ndarray | None = None
    gallery: np.ndarray | None = None


def evaluate_transfer(
    zoo,
    similarities: Mapping[str, Similarity],
    config: TransferConfig | None = None,
    progress: ProgressFn | None = None,
    selectors: Sequence[str] = (),
) -> dict[str, Any]:
    """Scratch, random, chosen and oracle accuracies per target task, shots and rule.

    `similarities`: weights-only methods by name. `selectors`: names of further rules
    (estimators such as logme, hybrids such as lps+logme@10, rankers such as rank:chain);
    a similarity they build on that is missing from `similarities` is loaded by name.
    """
    cfg = config or TransferConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    budget = cfg.budget()
    rules = parse_rules([*similarities, *selectors])
    sims = dict(similarities)
    for r in rules:
        if r.kind == "similarity" and r.name not in sims:
            sims[r.name] = load_similarity(method=r.name)
    dataset = zoo.dataset()
    names = [t.name for t in zoo.tasks]
    labels = zoo.task_ids
    targets = list(range(len(names)))
    if cfg.targets is not None:  # "1 vs 0" names the task "0 vs 1"
        wanted = {canonical_name(t) for t in cfg.targets}
        known = {canonical_name(n) for n in names}
        unknown = sorted(t for t in cfg.targets if canonical_name(t) not in known)
        if unknown:
            raise ParamsimError(f"unknown target tasks {unknown}; the zoo has {names}")
        targets = [t for t in targets if canonical_name(names[t]) in wanted]
    if len(zoo.tasks) < 2:
        raise ParamsimError("transfer needs a zoo with at least two tasks")
    _refuse_swapped_duplicates(zoo.tasks)
    for sim in sims.values():  # before any training: a saved metric that saw every target
        seen = sim.seen_tasks if sim.learned else None
        if seen is not None and all(canonical_name(names[t]) in seen for t in targets):
            raise ParamsimError(
                f"{sim.name} trained on every target task ({sim.source}); fit it on a "
                "subset of tasks or use --methods lps, which is fitted per fold"
            )
    arch = majority_arch(zoo)
    tests = {}
    for t in targets:
        rows, side = task_rows(zoo.tasks[t], dataset.y_test)
        tests[t] = EvalSet(dataset.x_test, torch.as_tensor(rows), torch.as_tensor(side).long())

    # 1. K-shot draws, their validation parts, and probes (one stacked run per K)
    instances: list[Instance] = []
    vals: list[EvalSet] = []
    for k in cfg.shots:
        batch = []
        for t in targets:
            for r in range(cfg.repeats):
                rows = kshot_rows(zoo.tasks[t], dataset, k, (cfg.seed, k, r, t))
                x = dataset.x_train[torch.as_tensor(rows)]
                y = torch.as_tensor(task_rows(zoo.tasks[t], dataset.y_train[rows])[1]).long()
                batch.append(Instance(t, k, r, x, y, rows))
                vrows, vy = validation_rows(
                    zoo.tasks[t], dataset, rows, cfg.val_per_class, (cfg.seed, k, r, t, 11)
                )
                vals.append(
                    EvalSet(dataset.x_train, torch.as_tensor(vrows), torch.as_tensor(vy).long())
                )
        _train_probes(batch, zoo, arch, tests, cfg, budget)
        instances += batch
    say(f"trained {len(instances) * cfg.probes} probe models")

    # 2. every candidate source fine-tuned on every draw (independent of the rules)
    candidates = labels[None, :] != np.array([inst.task_id for inst in instances])[:, None]
    candidates &= source_subset(labels, cfg.sources_per_task, cfg.seed)[None, :]
    bank = SourceBank(zoo)
    ft, val, finetune_seconds = _finetune_all(bank, instances, candidates, tests, vals, cfg, say)
    say(f"fine-tuned {int(candidates.sum())} source/target pairs in {finetune_seconds:.1f} s")

    # 3. every rule's scores
    fold = fold_of(names, cfg.folds, cfg.seed)
    scores: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    views: dict[str, list[_View]] = {}
    networks = zoo.networks()
    model_tasks = [zoo.tasks[int(t)] for t in labels]
    want_views = {r.base for r in rules if r.kind == "learned"}
    est_names = [r.estimator for r in rules if r.kind == "estimator"]
    est_scores: dict[str, np.ndarray] = {}
    est_seconds: dict[str, float] = {}
    for rule in rules:
        t0 = time.perf_counter()
        try:
            if rule.kind == "similarity":
                sim = sims[rule.name]
                views[rule.name] = _similarity_views(
                    sim,
                    instances,
                    networks,
                    model_tasks,
                    names,
                    fold,
                    cfg,
                    say,
                    rule.name in want_views,
                    getattr(zoo, "path", None),
                )
                S = np.full(candidates.shape, np.nan)
                for v in views[rule.name]:
                    S[v.rows] = v.S
                source = (
                    f"fitted per fold ({cfg.folds} folds)"
                    if sim.learned and sim.seen_tasks is None
                    else sim.source
                )
            elif rule.kind == "estimator":
                if not est_scores:
                    est_scores, est_seconds = estimate.estimator_scores(
                        bank, candidates, instances, est_names, budget
                    )
                S = est_scores[rule.estimator]
                share = est_seconds["forward"] / len(est_names)
                t0 = time.perf_counter() - est_seconds[rule.estimator] - share
                source = f"{int(candidates.sum(1).max())} forward passes per draw"
            elif rule.kind == "hybrid":
                for dep in (rule.base, rule.estimator):
                    if dep not in scores:
                        raise _Skip(f"needs {dep}, which was skipped")
                # the top M among the candidates only: a model that cannot be picked (the
                # target's own task, one left out by sources_per_task) must not take a slot
                base = np.where(candidates, scores[rule.base], np.nan)
                S = hybrid_scores(base, scores[rule.estimator], rule.m)
                source = f"top {rule.m} by {rule.base}, re-ranked by {rule.estimator}"
            elif rule.kind == "history":
                if rule.base not in scores:
                    raise _Skip(f"needs {rule.base}, which was skipped")
                S = _history_scores(
                    scores[rule.base], ft, candidates, instances, labels, names, fold
                )
                source = (
                    f"{rule.base} mixed with the outcomes of the {history.NEIGHBOURS} most "
                    "similar past targets (other folds)"
                )
            else:
                if rule.base not in views:
                    raise _Skip(f"needs {rule.base}, which was skipped")
                if any(v.probe is None for v in views[rule.base]):
                    raise _Skip(
                        f"{rule.base} has no embedding to learn from, or its embeddings do not "
                        "fit --memory-budget"
                    )
                S = _ranker_scores(views[rule.base], instances, ft, labels, names, fold, cfg)
                source = f"ranker on {rule.base} embeddings, trained per fold ({cfg.folds} folds)"
        except ParamsimError:
            raise
        except _Skip as exc:
            skipped[rule.name] = str(exc)
            say(f"{rule.name}: skipped ({exc})")
            continue
        except ImportError as exc:  # a missing optional dependency skips the rule; bugs surface
            skipped[rule.name] = f"failed: {type(exc).__name__}: {exc}"
            say(f"{rule.name}: skipped ({skipped[rule.name]})")
            continue
        scores[rule.name] = S
        info[rule.name] = {
            "kind": rule.kind,
            "seconds": time.perf_counter() - t0,
            "source": source,
        }
        say(f"{rule.name}: done in {info[rule.name]['seconds']:.1f} s")

    model_ids = np.array([r.id for r in zoo.records])
    methods: dict[str, Any] = {}
    for name, S in scores.items():
        methods[name] = {
            "shots": score_rule(instances, S, ft, val, labels, names, cfg, model_ids),
            **info[name],
        }
    compare_with_best_estimator(methods, {n: m["kind"] for n, m in methods.items()}, cfg.seed)
    costs: dict[str, Any] = {}
    if cfg.costs and methods:
        t0 = time.perf_counter()
        fitted = {n: v[-1].method for n, v in views.items() if v}
        ran = [r for r in rules if r.name in methods]
        costs = measure_costs(ran, fitted, zoo, bank, instances, candidates, arch, cfg)
        say(f"timed one selection per rule in {time.perf_counter() - t0:.1f} s")

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
        "baselines": baselines(instances, ft, val, names, cfg),
        "methods": methods,
        "skipped": skipped,
        "costs": costs,
        "n_candidate_pairs": int(candidates.sum()),
        "finetune_seconds": finetune_seconds,
        "total_seconds": time.perf_counter() - started,
        MATRICES: {
            "model_ids": model_ids,
            "model_tasks": np.array([names[int(t)] for t in labels]),
            "finetuned": ft,
            "validation": val,
            **{f"score:{name}": np.where(candidates, S, np.nan) for name, S in scores.items()},
        },
    }


def source_subset(labels: np.ndarray, per_task: int, seed: int) -> np.ndarray:
    """Which models may be picked: `per_task` of each task's models (a seeded draw, the same
    for every target), or all of them when per_task is 0. Fine-tuning every candidate on
    every draw is what a transfer evaluation spends its time on, so this is its main knob."""
    keep = np.ones(len(labels), dtype=bool)
    if per_task <= 0:
        return keep
    rng = np.random.default_rng([seed, 13])
    keep[:] = False
    for t in np.unique(labels):
        members = np.flatnonzero(labels == t)
        keep[rng.permutation(members)[:per_task]] = True
    return keep


def _refuse_swapped_duplicates(tasks) -> None:
    """A zoo with "0 vs 1" and "1 vs 0" as two tasks would offer a target's own task as a
    source and fit learned methods on it; recipes refuse such zoos, older ones may hold one."""
    first: dict[tuple, str] = {}
    for t in tasks:
        other = first.setdefault(task_key(t), t.name)
        if other != t.name:
            raise ParamsimError(
                f"the zoo holds {other!r} and {t.name!r}, one task with its sides swapped; "
                "rebuild it with each task once"
            )


class _Skip(Exception):
    """A rule that cannot run because what it builds on did not."""


def _train_probes(batch, zoo, arch, tests, cfg, budget) -> None:
    """Train every draw's probes in one stacked run; note scratch accuracy and networks."""
    from paramsim.weights import from_state_dict

    P = cfg.probes
    k = batch[0].shots
    seeds = [probe_seed(cfg.seed, k, b.repeat, b.task_id, p) for b in batch for p in range(P)]
    stack = train_probes(
        arch,
        [(zoo.tasks[b.task_id], b.x, b.y) for b in batch for _ in range(P)],
        seeds,
        cfg.probe_lr,
        cfg.probe_steps,
        cfg.probe_init_scale,
    )
    acc = stack_accuracy(stack, [tests[b.task_id] for b in batch for _ in range(P)], budget)
    for i, b in enumerate(batch):
        b.scratch = float(acc[i * P : (i + 1) * P].mean())
        b.probes = [from_state_dict(stack.state_dict(i * P + p), arch) for p in range(P)]


def _finetune_all(bank, instances, candidates, tests, vals, cfg, say):
    """(test accuracy, validation accuracy, seconds): (n_instances, n_models) each."""
    pairs = [(int(m), j) for j in range(len(instances)) for m in np.flatnonzero(candidates[j])]
    t0 = time.perf_counter()
    done = [0, 1]  # fine-tunes so far, next tenth to report

    def progress(n: int) -> None:
        done[0] += n
        if done[0] * 10 >= done[1] * len(pairs) and done[1] < 10:
            rate = done[0] / max(time.perf_counter() - t0, 1e-9)
            say(f"fine-tuned {done[0]}/{len(pairs)} ({rate:.0f}/s)")
            done[1] = done[0] * 10 // len(pairs) + 1

    evals = [
        [tests[inst.task_id], vals[j]] if len(vals[j]) else [tests[inst.task_id]]
        for j, inst in enumerate(instances)
    ]
    accs = bank.finetune(
        pairs,
        [(inst.x, inst.y) for inst in instances],
        evals,
        cfg.finetune_lr,
        cfg.finetune_steps,
        cfg.finetune == "head",
        cfg.head == "reset",
        cfg.budget(),
        cfg.chunk,
        progress,
    )
    ft = np.full(candidates.shape, np.nan)
    val = np.full(candidates.shape, np.nan)
    for (m, j), a in zip(pairs, accs, strict=True):
        ft[j, m] = a[0]
        if len(a) > 1:
            val[j, m] = a[1]
    return ft, val, time.perf_counter() - t0


def _probe_embeddings(method, instances, rows, cfg) -> np.ndarray | None:
    """(len(rows), d): each draw's probe embeddings, averaged over its probes (unit first)."""
    queries = [p for j in rows for p in instances[j].probes]
    e = embed_or_none(method, queries, Context(seed=cfg.seed))
    if e is None:
        return None
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e.reshape(len(rows), cfg.probes, -1).mean(1)


def _probe_similarity(method, instances, rows, networks, cfg) -> np.ndarray:
    """(len(rows), n_models): similarity to each draw's probes, averaged over its probes."""
    queries = [p for j in rows for p in instances[j].probes]
    S = bounded_cross_similarity(
        method, queries, networks, Context(seed=cfg.seed), cfg.budget().bytes
    )
    return S.reshape(len(rows), cfg.probes, -1).mean(axis=1)


def _view(method, instances, score_rows, networks, cfg, embed: bool) -> _View:
    """Scores of `score_rows`; with `embed`, every draw's probe embedding and the gallery's
    (left out when they would not fit the memory budget: a ranker on them is then skipped)."""
    S = _probe_similarity(method, instances, score_rows, networks, cfg)
    ctx = Context(seed=cfg.seed)
    n_rows = len(networks) + len(instances) * cfg.probes
    if not embed or not fits(method, networks, n_rows, cfg.budget().bytes, ctx):
        return _View(method, score_rows, S)
    gallery = embed_or_none(method, networks, ctx)
    if gallery is None:
        return _View(method, score_rows, S)
    everyone = list(range(len(instances)))
    return _View(
        method, score_rows, S, _probe_embeddings(method, instances, everyone, cfg), gallery
    )


def _similarity_views(
    sim, instances, networks, model_tasks, names, fold, cfg, say, embed, zoo_dir=None
):
    """One view per fold for a learned method fitted here (never on the fold it scores), else
    one view of the rows its training did not see. `zoo_dir` lets a learned method cache its
    training material beside the zoo (LPS's auxiliary group tasks)."""
    if sim.learned and sim.seen_tasks is None:  # cross-fit per fold
        out = []
        for f in range(cfg.folds):
            held = {n for n, g in fold.items() if g == f}
            rows = [j for j, inst in enumerate(instances) if names[inst.task_id] in held]
            if not rows:
                continue
            say(f"{sim.name}: fitting fold {f + 1}/{cfg.folds} without {len(held)} tasks")
            fitted = fit_excluding(sim, networks, model_tasks, held, cfg.seed + f, zoo=zoo_dir)
            out.append(_view(fitted.method, instances, rows, networks, cfg, embed))
        return out
    seen = sim.seen_tasks or frozenset()
    rows = [
        j for j, inst in enumerate(instances) if canonical_name(names[inst.task_id]) not in seen
    ]
    return [_view(sim.method, instances, rows, networks, cfg, embed)]  # rows: checked first


def _history_scores(base, ft, candidates, instances, labels, names, fold) -> np.ndarray:
    """`hist:BASE` for every draw, remembering only the draws of the same K whose target is
    in another fold: a target's own outcomes, and its fold's, never reach its scores."""
    S = np.full(ft.shape, np.nan)
    targets = np.array([names[inst.task_id] for inst in instances])
    shots = np.array([inst.shots for inst in instances])
    in_fold = np.array([fold[t] for t in targets])
    model_tasks = [names[int(t)] for t in labels]
    for k in np.unique(shots):
        for f in np.unique(in_fold):
            rows = np.flatnonzero((shots == k) & (in_fold == f))
            past = np.flatnonzero((shots == k) & (in_fold != f))
            if len(rows):
                S[rows] = history.history_scores(
                    base[rows],
                    candidates[rows],
                    ft[past],
                    candidates[past],
                    targets[past],
                    model_tasks,
                    targets[rows],
                )
    return S


def _ranker_scores(base_views, instances, ft, labels, names, fold, cfg) -> np.ndarray:
    """A ranker per view and fold, trained on the draws of the other folds, with the held-out
    fold's tasks removed from the sources as well: nothing of the fold it scores."""
    S = np.full(ft.shape, np.nan)
    source_tasks = np.array([names[int(t)] for t in labels])
    target_tasks = np.array([names[inst.task_id] for inst in instances])
    for v in base_views:
        for f in range(cfg.folds):
            held = np.array([fold[n] == f for n in names])
            rows = [j for j in v.rows if held[instances[j].task_id]]
            if not rows:
                continue
            train = np.flatnonzero(~np.isin(target_tasks, np.array(names)[held]))
            keep = ~np.isin(source_tasks, np.array(names)[held])
            data = ranker.RankData(
                probe=v.probe[train],
                sources=v.gallery[keep],
                accuracy=ft[np.ix_(train, keep)],
                target_tasks=target_tasks[train].tolist(),
                source_tasks=source_tasks[keep].tolist(),
            )
            model = ranker.fit_ranker(data, seed=cfg.seed + f)
            S[rows] = ranker.rank_scores(model, v.probe[rows], v.gallery)
    return S
