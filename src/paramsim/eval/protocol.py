"""The evaluation loop: every method scored on exactly the same held-out models of every
split; learned methods fitted per split on training tasks only (splits: `paramsim.eval.splits`,
scores: `paramsim.eval.scoring`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from paramsim.data import Task, relation_matrix
from paramsim.errors import ParamsimError
from paramsim.eval import metrics
from paramsim.eval.scoring import SCORES, mean_curve, mean_std, score_split
from paramsim.eval.splits import Split, index_tasks
from paramsim.features.adapter import accepts_val
from paramsim.features.base import Context, Method
from paramsim.methods import missing_dependency
from paramsim.weights import Network

ProgressFn = Callable[[str, int], None]


def _similarity(method: Method, nets: Sequence[Network], context: Context) -> np.ndarray:
    S = np.asarray(method.similarity(nets, context), dtype=np.float64)
    if S.shape != (len(nets), len(nets)):
        raise ValueError(f"similarity has shape {S.shape}, expected {(len(nets), len(nets))}")
    return S


def evaluate(
    networks: Sequence[Network],
    model_tasks: Sequence[Task],
    methods: Mapping[str, Method] | Sequence[Method],
    splits: Sequence[Split],
    context: Context | None = None,
    *,
    zoo_name: str = "",
    fixed_mode: str = "all",
    strict: bool = False,
    classification_rule: str = "mean",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Score every method on every split; returns the results dict (README.md, "Evaluation").

    Learned methods: a fresh deep copy of the given (unfitted) method is fitted per split on
    the training tasks' `train_ids` (a `fit(..., val=(networks, tasks))` parameter receives
    the validation tasks; otherwise they are added to the training set), then scored on the
    held-out models. No held-out task ever reaches `fit`.

    Fixed methods: with `fixed_mode="all"` the similarity is computed once over all models
    and indexed per split; for a set-dependent method (`Method.set_dependent`) that set is the
    whole zoo. `fixed_mode="heldout"` recomputes it per split on the needed models.

    A method that cannot run here is recorded under "skipped" with the reason: its `check`
    returned one, or it needs a third-party package that is not installed. With `strict`
    those raise too. Every other error inside a method propagates: a bug is never a skip.
    """
    if fixed_mode not in ("all", "heldout"):
        raise ValueError(f"fixed_mode must be 'all' or 'heldout', not {fixed_mode!r}")
    if len(networks) != len(model_tasks):
        raise ParamsimError(
            f"{len(networks)} networks but {len(model_tasks)} task labels; give one per model"
        )
    if not splits:
        raise ParamsimError("no splits to evaluate; make at least one with make_splits")
    context = context or Context()
    if isinstance(methods, Mapping):
        named = dict(methods)
    else:
        named = {m.name: m for m in methods}
    labels, tasks = index_tasks(model_tasks)
    relation = relation_matrix(tasks).numpy()
    n = len(networks)
    for sp in splits:
        top = max(sp.train_ids + sp.val_ids + sp.seen_ids + sp.test_ids, default=-1)
        if top >= n:
            raise ParamsimError(f"split {sp.index} names model {top}, but there are {n} models")

    started = time.perf_counter()
    results: dict[str, Any] = {
        "zoo": zoo_name,
        "splits": len(splits),
        "seed": splits[0].seed,
        "n_models": n,
        "n_tasks": len(tasks),
        "tasks": [t.name for t in tasks],
        "protocol": {
            "fixed_mode": fixed_mode,
            "classification_rule": classification_rule,
            "n_test_tasks": len(splits[0].test_tasks),
            "n_val_tasks": len(splits[0].val_tasks),
            "n_train_tasks": len(splits[0].train_tasks),
            "n_query": len(splits[0].query_ids),
            "n_gallery": len(splits[0].gallery_ids),
            "all_vs_all": splits[0].query_ids == splits[0].gallery_ids,
        },
        "split_details": [sp.to_dict() for sp in splits],
        "methods": {},
        "skipped": {},
    }
    for name, method in named.items():
        reason = method.check(networks)
        if reason and strict:
            raise ParamsimError(f"method {name} cannot run on these models: {reason}")
        entry = None
        if not reason:
            try:
                entry = _evaluate_method(
                    name,
                    method,
                    networks,
                    model_tasks,
                    labels,
                    relation,
                    tasks,
                    splits,
                    context,
                    fixed_mode,
                    classification_rule,
                    progress,
                )
            except ModuleNotFoundError as exc:
                package = missing_dependency(exc)
                if package is None or strict:
                    raise
                reason = f"needs the package {package!r}, which is not installed"
        if entry is not None:
            results["methods"][name] = entry
            continue
        results["skipped"][name] = str(reason)
        if progress:
            for sp in splits:
                progress(name, sp.index)
    results["total_seconds"] = time.perf_counter() - started
    return results


def _evaluate_method(
    name: str,
    method: Method,
    networks: Sequence[Network],
    model_tasks: Sequence[Task],
    labels: np.ndarray,
    relation: np.ndarray,
    tasks: Sequence[Task],
    splits: Sequence[Split],
    context: Context,
    fixed_mode: str,
    classification_rule: str,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    learned = bool(getattr(method, "learned", False))
    fit_s = sim_s = 0.0
    embedded = 0
    per_split: list[dict[str, Any]] = []
    example: dict[str, Any] | None = None
    S_all: np.ndarray | None = None

    for sp in splits:
        if learned:
            fitted = copy.deepcopy(method)
            t0 = time.perf_counter()
            train = list(sp.train_ids)
            val = list(sp.val_ids)
            if accepts_val(fitted.fit):
                fitted.fit(
                    [networks[i] for i in train],
                    [model_tasks[i] for i in train],
                    context,
                    val=([networks[i] for i in val], [model_tasks[i] for i in val]),
                )
            else:
                ids = train + val
                fitted.fit([networks[i] for i in ids], [model_tasks[i] for i in ids], context)
            fit_s += time.perf_counter() - t0
        else:
            fitted = method

        if not learned and fixed_mode == "all":
            if S_all is None:
                t0 = time.perf_counter()
                S_all = _similarity(method, networks, context)
                sim_s += time.perf_counter() - t0
                embedded += len(networks)
            S, local = S_all, None
        else:
            needed = sorted(set(sp.test_ids) | set(sp.train_ids) | set(sp.seen_ids))
            if not sp.seen_ids:
                needed = sorted(sp.test_ids)
            t0 = time.perf_counter()
            S = _similarity(fitted, [networks[i] for i in needed], context)
            sim_s += time.perf_counter() - t0
            embedded += len(needed)
            local = {m: r for r, m in enumerate(needed)}

        scores = score_split(S, labels, sp, relation, local, classification_rule)
        per_split.append(scores)
        if example is None:
            rows = [local[i] for i in sp.test_ids] if local is not None else list(sp.test_ids)
            lab = labels[list(sp.test_ids)]
            sub = S[np.ix_(rows, rows)]
            order_tasks, tsim = metrics.task_similarity(sub, lab, np.arange(len(rows)))
            example = {
                "split": sp.index,
                "tasks": [tasks[t].name for t in order_tasks],
                "similarity": tsim.tolist(),
                "relation": relation[np.ix_(order_tasks, order_tasks)].tolist(),
            }
        if progress:
            progress(name, sp.index)

    entry: dict[str, Any] = {
        "weights_only": bool(getattr(method, "weights_only", True)),
        "learned": learned,
        "set_dependent": bool(getattr(method, "set_dependent", False)),
    }
    for key in SCORES:
        entry[key] = mean_std([s[key] for s in per_split])
    total = fit_s + sim_s
    entry.update(
        seconds=total,
        fit_seconds=fit_s,
        similarity_seconds=sim_s,
        models_per_s=embedded / sim_s if sim_s > 0 else float("inf"),
        cmc=mean_curve([s["cmc"] for s in per_split]),
        per_split=[{k: v for k, v in s.items() if k != "cmc"} for s in per_split],
        task_similarity=example,
    )
    return entry
