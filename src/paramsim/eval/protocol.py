"""The evaluation protocol: task splits, fitting learned methods on training tasks only, and
scoring every method on exactly the same held-out models.

A split divides tasks, never models of one task, so retrieval measures generalisation to
tasks the metric has not seen. Per split:

- test tasks (about `test_fraction` of all tasks): all their models are `test_ids`; by
  default every one queries all the others (`query_ids == gallery_ids == test_ids`), or with
  `n_queries=k` k models per task query and the rest form the gallery;
- validation tasks, carved from the remaining tasks, for a learned method's early stopping;
- training tasks: `train_ids` train the metric and serve as references for seen-task
  classification; `seen_ids` (about `seen_fraction` of each training task's models) are
  withheld from training and classified.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.data import Task, relation_matrix, task_key
from paramsim.errors import ParamsimError
from paramsim.eval import metrics
from paramsim.features.adapter import accepts_val
from paramsim.features.base import Context, Method
from paramsim.methods import missing_dependency
from paramsim.weights import Network

SCORES = ("map", "rank1", "rank5", "rank10", "auc", "relation_spearman", "classification")
CMC_RANKS = 20  # length of the stored CMC curve


@dataclass(frozen=True)
class Split:
    """One random task split; all ids are model indices."""

    index: int
    seed: int
    train_tasks: tuple[int, ...]
    val_tasks: tuple[int, ...]
    test_tasks: tuple[int, ...]
    train_ids: tuple[int, ...]
    val_ids: tuple[int, ...]
    seen_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    gallery_ids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def index_tasks(model_tasks: Sequence[Task]) -> tuple[np.ndarray, list[Task]]:
    """Integer task id per model (first-seen order) and the distinct tasks.

    Tasks are told apart by `task_key`, so "0 vs 1" and "1 vs 0" are one task: a split can
    never train on one and hold out the other.
    """
    ids: dict[tuple, int] = {}
    first: list[Task] = []
    labels = np.empty(len(model_tasks), dtype=np.int64)
    for i, t in enumerate(model_tasks):
        key = task_key(t)
        if key not in ids:
            ids[key] = len(ids)
            first.append(t)
        labels[i] = ids[key]
    return labels, first


def _check_fraction(name: str, value: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ParamsimError(f"{name} must be in {bound}, got {value}")


def make_splits(
    task_ids_per_model: Sequence[int] | np.ndarray,
    n_splits: int = 5,
    seed: int = 0,
    test_fraction: float = 0.4,
    n_queries: int | None = None,
    val_fraction: float = 0.2,
    seen_fraction: float = 0.4,
) -> list[Split]:
    """`n_splits` random task splits; split i draws from numpy's generator seeded [seed, i].

    `n_queries=None` makes every held-out model a query against all other held-out models;
    an integer k takes k queries per held-out task (at least one model stays in the gallery).
    `seen_fraction=0` withholds no models of training tasks (no classification score).
    """
    labels = np.asarray(task_ids_per_model, dtype=np.int64)
    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    _check_fraction("seen_fraction", seen_fraction, allow_zero=True)
    if n_queries is not None and n_queries < 1:
        raise ParamsimError(f"n_queries must be at least 1 (or None for all), got {n_queries}")
    tasks = np.unique(labels)
    if len(tasks) < 3:
        raise ParamsimError(
            f"a task split needs at least 3 tasks, the models cover {len(tasks)}; "
            "build a zoo with more tasks"
        )
    n_test = min(max(2, round(test_fraction * len(tasks))), len(tasks) - 1)
    n_rest = len(tasks) - n_test
    n_val = min(round(val_fraction * n_rest), n_rest - 1)
    members = {int(t): np.flatnonzero(labels == t) for t in tasks}

    splits = []
    for i in range(n_splits):
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(tasks)
        test_t = np.sort(order[:n_test])
        val_t = np.sort(order[n_test : n_test + n_val])
        train_t = np.sort(order[n_test + n_val :])
        train_ids: list[int] = []
        seen_ids: list[int] = []
        for t in train_t:
            m = rng.permutation(members[int(t)])
            k = 0
            if seen_fraction > 0 and len(m) >= 2:
                k = min(max(1, round(seen_fraction * len(m))), len(m) - 1)
            seen_ids += m[:k].tolist()
            train_ids += m[k:].tolist()
        test_ids = np.concatenate([members[int(t)] for t in test_t])
        if n_queries is None:
            queries = gallery = test_ids
        else:
            q: list[int] = []
            for t in test_t:
                m = rng.permutation(members[int(t)])
                q += m[: min(n_queries, max(len(m) - 1, 0))].tolist()
            queries = np.asarray(q, dtype=np.int64)
            gallery = np.setdiff1d(test_ids, queries)
        val_ids = (
            np.concatenate([members[int(t)] for t in val_t]) if len(val_t) else np.zeros(0, int)
        )

        def tup(a) -> tuple[int, ...]:
            return tuple(int(x) for x in np.sort(np.asarray(a, dtype=np.int64)))

        splits.append(
            Split(
                index=i,
                seed=seed,
                train_tasks=tup(train_t),
                val_tasks=tup(val_t),
                test_tasks=tup(test_t),
                train_ids=tup(train_ids),
                val_ids=tup(val_ids),
                seen_ids=tup(seen_ids),
                test_ids=tup(test_ids),
                query_ids=tup(queries),
                gallery_ids=tup(gallery),
            )
        )
    return splits


# --------------------------------------------------------------------------- scoring


def score_split(
    S: np.ndarray,
    labels: np.ndarray,
    split: Split,
    relation: np.ndarray,
    local: Mapping[int, int] | None = None,
    classification_rule: str = "mean",
) -> dict[str, Any]:
    """All scores of one split. `local` maps model ids to rows of S when S covers a subset."""

    def ix(ids: Sequence[int]) -> np.ndarray:
        if local is None:
            return np.asarray(ids, dtype=np.int64)
        return np.asarray([local[i] for i in ids], dtype=np.int64)

    if local is None:
        lab = labels
    else:
        lab = np.empty(len(S), dtype=np.int64)
        for model, row in local.items():
            lab[row] = labels[model]
    ret = metrics.retrieval(S, lab, ix(split.query_ids), ix(split.gallery_ids), CMC_RANKS)
    test = ix(split.test_ids)
    out: dict[str, Any] = {
        "map": ret.map,
        "rank1": ret.rank(1),
        "rank5": ret.rank(5),
        "rank10": ret.rank(10),
        "auc": metrics.verification_auc(S, lab, test),
        "relation_spearman": metrics.relation_spearman(S, lab, test, relation),
        "classification": (
            metrics.classification_accuracy(
                S, lab, ix(split.seen_ids), ix(split.train_ids), classification_rule
            )
            if split.seen_ids and split.train_ids
            else float("nan")
        ),
        "n_queries": ret.n_queries,
        "cmc": ret.cmc.tolist(),
    }
    return out


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one split) ignoring NaN."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan")}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std}


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    n = min((len(c) for c in curves), default=0)
    if n == 0:
        return []
    return np.mean([np.asarray(c[:n]) for c in curves], axis=0).tolist()


# --------------------------------------------------------------------------- evaluate


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
    and indexed per split, which assumes a pair's similarity does not depend on the other
    models in the set; `fixed_mode="heldout"` recomputes it per split on the needed models.

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
    }
    for key in SCORES:
        entry[key] = _mean_std([s[key] for s in per_split])
    total = fit_s + sim_s
    entry.update(
        seconds=total,
        fit_seconds=fit_s,
        similarity_seconds=sim_s,
        models_per_s=embedded / sim_s if sim_s > 0 else float("inf"),
        cmc=_mean_curve([s["cmc"] for s in per_split]),
        per_split=[{k: v for k, v in s.items() if k != "cmc"} for s in per_split],
        task_similarity=example,
    )
    return entry


# --------------------------------------------------------------------------- zoo


def evaluate_zoo(
    zoo: Any,
    methods: Mapping[str, Method] | Sequence[Method],
    n_splits: int = 5,
    seed: int = 0,
    *,
    skipped: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    split_options: Mapping[str, Any] | None = None,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """`evaluate` on a zoo (object or directory) with the given methods.

    `skipped` names methods the caller could not make (e.g. a missing optional package) and
    why; they join the report's skipped rows. `order` is the row order of the report
    (default: the methods, then the skipped ones).
    """
    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    named = dict(methods) if isinstance(methods, Mapping) else {m.name: m for m in methods}
    skipped = dict(skipped or {})
    if isinstance(zoo, (str, Path)):
        from paramsim.zoo import open_zoo

        zoo_name = Path(zoo).name
        zoo = open_zoo(zoo)
    else:
        zoo_name = str(getattr(zoo, "path", getattr(zoo, "name", "zoo")))
        zoo_name = Path(zoo_name).name or zoo_name
    task_ids = np.asarray(zoo.task_ids, dtype=np.int64)
    model_tasks = [zoo.tasks[int(t)] for t in task_ids]
    splits = make_splits(task_ids, n_splits=n_splits, seed=seed, **dict(split_options or {}))

    needs_data = any(not getattr(m, "weights_only", True) for m in named.values())
    context = Context(dataset=zoo.dataset() if needs_data else None, seed=seed)
    t0 = time.perf_counter()
    networks = zoo.networks()
    load_seconds = time.perf_counter() - t0
    if progress:
        for name in skipped:
            for i in range(n_splits):
                progress(name, i)
    results = evaluate(
        networks,
        model_tasks,
        named,
        splits,
        context,
        zoo_name=zoo_name,
        progress=progress,
        **evaluate_options,
    )
    results["skipped"] = {**skipped, **results["skipped"]}
    results["load_seconds"] = load_seconds
    rows = list(order) if order is not None else [*named, *skipped]
    rank = {n: i for i, n in enumerate(rows)}
    results["method_order"] = sorted(
        list(results["methods"]) + list(results["skipped"]), key=lambda n: rank.get(n, 1e9)
    )
    return results
