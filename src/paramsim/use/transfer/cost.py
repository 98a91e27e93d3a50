"""What one selection costs, per rule, and how it grows with the number of candidates.

Timed on one draw (the first of the largest K), median of `repeats` runs, at a quarter, half
and all of its candidates (a seeded random subset). Stored models are taken to be in memory
already (as they are for an index): loading them is not timed, for any rule.

- weights-only rules (similarity, ranker, history): embed the probe, compare it with the stored
  embeddings (computed once, like an index), take the best; the probe's training is timed
  once and reported beside them (`probe_ms`). A method that compares pairs only, or whose
  stored embeddings would not fit the memory budget, is timed embedding the candidates
  too (`stored_embeddings` false);
- estimators: one forward pass per candidate over the shots, then the estimator;
- hybrids: the weights-only pick of the top M, then the estimator on those M;
- history: the similarity query, then the look-up of the past targets' outcomes (a table of
  one past draw per task of the zoo).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from paramsim.features.base import Context, cosine_matrix
from paramsim.use._common import embed_or_none
from paramsim.use.transfer import estimate, history, ranker
from paramsim.use.transfer.estimators import ESTIMATORS
from paramsim.use.transfer.rules import Rule, parse_rule
from paramsim.use.transfer.shots import Instance
from paramsim.use.transfer.similarity import bounded_cross_similarity, fits
from paramsim.zoo.finetune import SourceBank, train_probes


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def _root(rule: Rule) -> str:
    """The similarity method a weights-only rule stands on (through a ranker or history)."""
    base = rule.base
    while ":" in base:
        base = parse_rule(base).base
    return base


def measure_costs(
    rules: Sequence[Rule],
    methods: Mapping[str, Any],
    zoo,
    bank: SourceBank,
    instances: Sequence[Instance],
    candidates: np.ndarray,
    arch,
    cfg,
    repeats: int = 3,
) -> dict[str, Any]:
    """Per rule: forward passes and milliseconds of one selection at three candidate counts,
    and the slope in ms per 1000 candidates. `methods`: the fitted similarity method per name."""
    j = max(range(len(instances)), key=lambda i: (instances[i].shots, -i))
    inst = instances[j]
    ids_all = np.flatnonzero(candidates[j])
    rng = np.random.default_rng([cfg.seed, 5])
    sizes = sorted({max(1, len(ids_all) // 4), max(1, len(ids_all) // 2), len(ids_all)})
    subsets = {n: np.sort(rng.choice(ids_all, n, replace=False)) for n in sizes}
    probe = inst.probes[0]
    task = zoo.tasks[inst.task_id]
    probe_ms = _median_ms(
        lambda: train_probes(
            arch, [(task, inst.x, inst.y)], [0], cfg.probe_lr, cfg.probe_steps, cfg.probe_init_scale
        ),
        repeats,
    )
    networks = zoo.networks()
    ctx = Context(seed=cfg.seed)
    galleries = {  # the stored embeddings (an index), where they fit the budget
        name: embed_or_none(m, networks, ctx)
        for name, m in methods.items()
        if m is not None and fits(m, networks, len(networks), cfg.budget().bytes, ctx)
    }
    stacks = {n: bank.stack(subsets[n].tolist(), lr=0.0, steps=0) for n in sizes}
    y = inst.y.numpy()

    def weights_only(name: str, ids: np.ndarray) -> np.ndarray:
        method, gallery = methods[name], galleries.get(name)
        if gallery is None:  # pairs only, or an index too wide to hold: compare directly
            gal = [networks[i] for i in ids]
            return bounded_cross_similarity(method, [probe], gal, ctx, cfg.budget().bytes)[0]
        return cosine_matrix(embed_or_none(method, [probe], ctx), gallery[ids])[0]

    def estimator(name: str, models) -> np.ndarray:
        feats, probs = estimate.source_outputs(models, inst.x)
        return ESTIMATORS[name].score(feats, probs, y)

    def selection(rule: Rule, n: int) -> tuple[Callable[[], object], int] | None:
        """One selection among the n-candidate subset, and its forward passes."""
        ids = subsets[n]
        if rule.kind == "similarity":
            return (lambda: np.argmax(weights_only(rule.name, ids))), 0
        if rule.kind == "estimator":
            return (lambda: np.argmax(estimator(rule.name, stacks[n]))), n
        if rule.kind == "hybrid":
            if rule.base in methods:  # a similarity prefilter
                top = ids[np.argsort(-weights_only(rule.base, ids))[: rule.m]]

                def prefilter():
                    return weights_only(rule.base, ids)
            else:  # a ranker or history prefilter: time its own selection
                got = selection(parse_rule(rule.base), n)
                if got is None:
                    return None
                prefilter, top = got[0], ids[: rule.m]  # which M does not change the time
            few = bank.stack(top.tolist(), lr=0.0, steps=0)

            def hybrid():
                prefilter()
                return np.argmax(estimator(rule.estimator, few))

            return hybrid, min(rule.m, n)
        if rule.kind == "history":
            model_tasks = [str(t) for t in zoo.task_ids[ids]]
            past = sorted(set(model_tasks))
            outcomes = rng.random((len(past), len(ids)))  # a table's size; values don't matter
            allowed = np.ones((1, len(ids)), dtype=bool)

            def remembered():
                s = weights_only(rule.base, ids)[None]
                got = history.history_scores(
                    s, allowed, outcomes, np.ones_like(outcomes, bool), past, model_tasks
                )
                return np.argmax(got[0])

            return remembered, 0
        gallery = galleries.get(rule.base)
        if gallery is None:
            return None
        data = ranker.RankData(gallery[:1], gallery, np.zeros((1, len(gallery))), [], [])
        head = ranker.fit_ranker(data, steps=0)  # an untrained head costs the same
        method = methods[rule.base]

        def learned():
            e = embed_or_none(method, [probe], ctx)
            return np.argmax(ranker.rank_scores(head, e, gallery[ids]))

        return learned, 0

    out: dict[str, Any] = {}
    for rule in rules:
        weights_only_rule = rule.kind in ("similarity", "learned", "hybrid", "history")
        if weights_only_rule and methods.get(_root(rule)) is None:
            continue
        ms, passes = {}, {}
        for n in sizes:
            got = selection(rule, n)
            if got is None:
                break
            ms[n] = _median_ms(got[0], repeats)
            passes[n] = got[1]
        if not ms:
            continue
        ns = np.array(sorted(ms), dtype=float)
        slope = float(np.polyfit(ns, [ms[int(n)] for n in ns], 1)[0]) if len(ns) > 1 else 0.0
        out[rule.name] = {
            "candidates": [int(n) for n in ns],
            "ms": [ms[int(n)] for n in ns],
            "forward_passes": [passes[int(n)] for n in ns],
            "ms_per_1000_candidates": 1000 * slope,
            "probe_ms": probe_ms if weights_only_rule else 0.0,
            "ms_total": ms[int(ns[-1])] + (probe_ms if weights_only_rule else 0.0),
            "stored_embeddings": rule.kind == "estimator" or rule.base in galleries,
        }
    return {"draw": {"shots": inst.shots, "candidates": int(len(ids_all))}, "rules": out}
