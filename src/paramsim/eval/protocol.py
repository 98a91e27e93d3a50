"""The evaluation loop: every method scored on exactly the same held-out models of every
split; learned methods fitted per split on training tasks only (splits: `paramsim.eval.splits`,
scores: `paramsim.eval.scoring`, extra training models: `paramsim.eval.extra`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paramsim.data import Task, relation_matrix
from paramsim.errors import ParamsimError
from paramsim.eval import metrics
from paramsim.eval.extra import ExtraModels, allowed_extra, compatible, network_digest
from paramsim.eval.scoring import SCORES, mean_curve, mean_std, mean_task_ap, score_split
from paramsim.eval.splits import Split, index_tasks
from paramsim.features.adapter import accepts_val
from paramsim.features.base import Context, Method
from paramsim.methods import missing_dependency
from paramsim.weights import Network

ProgressFn = Callable[[str, int], None]


@dataclass
class _Setup:
    """What every method of one evaluation shares."""

    networks: Sequence[Network]
    model_tasks: Sequence[Task]
    labels: np.ndarray
    tasks: list[Task]
    relation: np.ndarray
    context: Context
    fixed_mode: str
    classification_rule: str
    extra: ExtraModels | None
    extra_ids: dict[int, list[int]]  # split index -> extra models allowed to train


def _similarity(method: Method, nets: Sequence[Network], context: Context) -> np.ndarray:
    S = np.asarray(method.similarity(nets, context), dtype=np.float64)
    if S.shape != (len(nets), len(nets)):
        raise ValueError(f"similarity has shape {S.shape}, expected {(len(nets), len(nets))}")
    return S


def _extra_ids(
    networks: Sequence[Network],
    model_tasks: Sequence[Task],
    splits: Sequence[Split],
    extra: ExtraModels,
) -> dict[int, list[int]]:
    """Per split, the extra models that may train (see `paramsim.eval.extra`); the barred
    tasks are read from the held-out and validation models themselves."""
    digests = [network_digest(n) for n in networks]
    out = {}
    for sp in splits:
        withheld = {digests[i] for i in (*sp.test_ids, *sp.val_ids, *sp.seen_ids)}
        out[sp.index] = allowed_extra(
            extra,
            exclude_tasks={model_tasks[i] for i in (*sp.test_ids, *sp.val_ids)},
            exclude_classes=sp.heldout_classes,
            withheld=withheld,
        )
    return out


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
    extra: ExtraModels | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Score every method on every split; returns the results dict (README.md, "Evaluation").

    Learned methods: a fresh deep copy of the given (unfitted) method is fitted per split on
    the training tasks' `train_ids` (a `fit(..., val=(networks, tasks))` parameter receives
    the validation tasks; otherwise they are added to the training set), then scored on the
    held-out models. No held-out task ever reaches `fit`. `extra` models train too, except
    those of the split's held-out or validation tasks, those touching a held-out class, and
    copies of the zoo's withheld models (`paramsim.eval.extra`).

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
    named = dict(methods) if isinstance(methods, Mapping) else {m.name: m for m in methods}
    labels, tasks = index_tasks(model_tasks)
    n = len(networks)
    for sp in splits:
        top = max(sp.train_ids + sp.val_ids + sp.seen_ids + sp.test_ids, default=-1)
        if top >= n:
            raise ParamsimError(f"split {sp.index} names model {top}, but there are {n} models")
    setup = _Setup(
        networks,
        model_tasks,
        labels,
        tasks,
        relation_matrix(tasks).numpy(),
        context or Context(),
        fixed_mode,
        classification_rule,
        extra,
        _extra_ids(networks, model_tasks, splits, extra) if extra is not None else {},
    )

    started = time.perf_counter()
    results: dict[str, Any] = {
        "zoo": zoo_name,
        "splits": len(splits),
        "seed": splits[0].seed,
        "n_models": n,
        "n_tasks": len(tasks),
        "tasks": [t.name for t in tasks],
        "protocol": {
            "holdout": splits[0].holdout,
            "n_heldout_classes": len(splits[0].heldout_classes),
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
        "extra": None,
        "methods": {},
        "skipped": {},
    }
    if extra is not None:
        results["extra"] = {
            "source": extra.source,
            "n_models": len(extra),
            "kept_per_split": [len(setup.extra_ids[sp.index]) for sp in splits],
        }
    for name, method in named.items():
        reason = method.check(networks)
        if reason and strict:
            raise ParamsimError(f"method {name} cannot run on these models: {reason}")
        entry = None
        if not reason:
            try:
                entry = _evaluate_method(name, method, splits, setup, progress)
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


def _fit(method: Method, sp: Split, setup: _Setup) -> Method:
    """A fresh copy of `method` fitted on the split's training models (and allowed extras)."""
    nets, mtasks = setup.networks, setup.model_tasks
    fitted = copy.deepcopy(method)
    if hasattr(fitted, "exclude_tasks"):
        # models a method adds by itself (LPS: its auxiliary zoo, its extra_zoo) must not be
        # of the split's held-out or validation tasks either; naming them passes no data
        barred = dict.fromkeys(mtasks[i] for i in (*sp.test_ids, *sp.val_ids))
        fitted.exclude_tasks = [*(fitted.exclude_tasks or []), *barred]
    train_n = [nets[i] for i in sp.train_ids]
    train_t = [mtasks[i] for i in sp.train_ids]
    if setup.extra is not None:
        ids = setup.extra_ids[sp.index]
        ok = compatible(method, train_n, [setup.extra.networks[i] for i in ids])
        train_n += [setup.extra.networks[ids[k]] for k in ok]
        train_t += [setup.extra.tasks[ids[k]] for k in ok]
    val_n = [nets[i] for i in sp.val_ids]
    val_t = [mtasks[i] for i in sp.val_ids]
    if accepts_val(fitted.fit):
        fitted.fit(train_n, train_t, setup.context, val=(val_n, val_t))
    else:
        fitted.fit(train_n + val_n, train_t + val_t, setup.context)
    return fitted


def _evaluate_method(
    name: str,
    method: Method,
    splits: Sequence[Split],
    setup: _Setup,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    learned = bool(getattr(method, "learned", False))
    networks, labels, relation = setup.networks, setup.labels, setup.relation
    fit_s = sim_s = 0.0
    embedded = 0
    per_split: list[dict[str, Any]] = []
    example: dict[str, Any] | None = None
    S_all: np.ndarray | None = None

    for sp in splits:
        fitted = method
        if learned:
            t0 = time.perf_counter()
            fitted = _fit(method, sp, setup)
            fit_s += time.perf_counter() - t0

        if not learned and setup.fixed_mode == "all":
            if S_all is None:
                t0 = time.perf_counter()
                S_all = _similarity(method, networks, setup.context)
                sim_s += time.perf_counter() - t0
                embedded += len(networks)
            S, local = S_all, None
        else:
            needed = sorted(set(sp.test_ids) | set(sp.train_ids) | set(sp.seen_ids))
            if not sp.seen_ids:
                needed = sorted(sp.test_ids)
            t0 = time.perf_counter()
            S = _similarity(fitted, [networks[i] for i in needed], setup.context)
            sim_s += time.perf_counter() - t0
            embedded += len(needed)
            local = {m: r for r, m in enumerate(needed)}

        scores = score_split(S, labels, sp, relation, local, setup.classification_rule)
        per_split.append(scores)
        if example is None:
            rows = [local[i] for i in sp.test_ids] if local is not None else list(sp.test_ids)
            lab = labels[list(sp.test_ids)]
            sub = S[np.ix_(rows, rows)]
            order_tasks, tsim = metrics.task_similarity(sub, lab, np.arange(len(rows)))
            example = {
                "split": sp.index,
                "tasks": [setup.tasks[t].name for t in order_tasks],
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
        task_ap=mean_task_ap([s["task_ap"] for s in per_split], [t.name for t in setup.tasks]),
        per_split=[{k: v for k, v in s.items() if k not in ("cmc", "task_ap")} for s in per_split],
        task_similarity=example,
    )
    return entry
