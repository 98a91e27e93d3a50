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

import contextlib
import copy
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.data import Task, relation_matrix
from paramsim.errors import ParamsimError
from paramsim.eval import metrics
from paramsim.features import FIXED_METHODS, get_method
from paramsim.features.base import Context, Method, cosine_matrix
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
    """Integer task id per model (first-seen order) and the distinct tasks."""
    ids: dict[Task, int] = {}
    labels = np.array([ids.setdefault(t, len(ids)) for t in model_tasks], dtype=np.int64)
    return labels, list(ids)


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


def _accepts_val(fit: Callable) -> bool:
    """Whether a fit function names a `val` parameter (validation tasks for early stopping)."""
    try:
        return "val" in inspect.signature(fit).parameters
    except (TypeError, ValueError):
        return False


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
    on_error: str = "skip",
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

    `on_error="skip"` records a method that raises as skipped with the error; "raise" re-raises.
    """
    if fixed_mode not in ("all", "heldout"):
        raise ValueError(f"fixed_mode must be 'all' or 'heldout', not {fixed_mode!r}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
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
        try:
            reason = method.check(networks)
        except Exception as exc:  # a check that crashes is a reason too
            if on_error == "raise":
                raise
            reason = f"check failed: {type(exc).__name__}: {exc}"
        if reason:
            results["skipped"][name] = str(reason)
            if progress:
                for sp in splits:
                    progress(name, sp.index)
            continue
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
        except Exception as exc:
            if on_error == "raise":
                raise
            results["skipped"][name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        results["methods"][name] = entry
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
            if _accepts_val(fitted.fit):
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


# --------------------------------------------------------------------------- method names

MethodFactory = Callable[[], Method]
_FACTORIES: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make `name` resolvable by `resolve_method` (and the CLI); later registrations win."""
    _FACTORIES[name] = factory


def unregister_method(name: str) -> None:
    _FACTORIES.pop(name, None)


@contextlib.contextmanager
def method_overrides(factories: Mapping[str, MethodFactory]) -> Iterator[None]:
    """Register `factories` for the duration of a block, then restore the previous ones."""
    _load_plugins()
    saved = dict(_FACTORIES)
    _FACTORIES.update(factories)
    try:
        yield
    finally:
        _FACTORIES.clear()
        _FACTORIES.update(saved)


_PLUGINS = ("paramsim.lps",)  # packages that register their methods on import


def _load_plugins() -> None:
    """Import optional method packages so that their `register_method` calls run."""
    import importlib

    for mod in _PLUGINS:
        try:
            importlib.import_module(mod)
        except Exception:  # an unavailable plugin is reported when its name is resolved
            continue


def known_method_names() -> list[str]:
    _load_plugins()
    names = list(_FACTORIES)
    names += [n for n in FIXED_METHODS if n not in names]
    if "lps" not in names:
        names.append("lps")
    return names


def _call_with_optional(fn: Callable, *args: Any, **optional: Any) -> Any:
    """Call `fn(*args)` passing only the optional keywords its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in optional.items() if var_kw or k in params}
    return fn(*args, **kw)


class MethodAdapter(Method):
    """Wrap an object with fit/embed (or similarity) that is not a `Method` subclass.

    `embed` and `similarity` may or may not take a context; `fit` may or may not take one
    or a `val` argument. The wrapped object is deep-copied with the adapter, so every split
    still fits a fresh copy.
    """

    def __init__(self, obj: Any, name: str, learned: bool | None = None) -> None:
        self.obj = obj
        self.name = name
        self.learned = bool(
            getattr(obj, "learned", hasattr(obj, "fit")) if learned is None else learned
        )
        self.weights_only = bool(getattr(obj, "weights_only", True))

    def check(self, networks: Sequence[Network]) -> str | None:
        fn = getattr(self.obj, "check", None)
        return fn(networks) if callable(fn) else None

    def fit(self, networks, tasks, context, val=None) -> MethodAdapter:
        if val is not None and not _accepts_val(self.obj.fit):
            # as in evaluate(): without a validation parameter, validation tasks train too
            networks, tasks = [*networks, *val[0]], [*tasks, *val[1]]
            val = None
        fitted = _call_with_optional(self.obj.fit, networks, tasks, context=context, val=val)
        if fitted is not None:
            self.obj = fitted
        return self

    def embed(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        return np.asarray(_call_with_optional(self.obj.embed, networks, context=context))

    def similarity(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        fn = getattr(self.obj, "similarity", None)
        if callable(fn):
            return np.asarray(_call_with_optional(fn, networks, context=context))
        return cosine_matrix(self.embed(networks, context))


def as_method(obj: Any, name: str) -> Method:
    """`obj` itself when it is a Method, else a `MethodAdapter` around it."""
    return obj if isinstance(obj, Method) else MethodAdapter(obj, name)


def _lps_unavailable() -> str:
    """Why "lps" is not registered: paramsim.lps registers it on import (see _PLUGINS)."""
    try:
        import paramsim.lps  # noqa: F401
    except Exception as exc:
        return f"paramsim.lps is not available ({type(exc).__name__}: {exc})"
    return "paramsim.lps registered no method named 'lps'"


def resolve_method(name: str) -> Method | str:
    """A method instance for `name`, or a string saying why it cannot run here.

    Unknown names raise ParamsimError. Order: registered factories (paramsim.lps registers
    "lps" when imported), then the fixed methods of `paramsim.features`.
    """
    if name not in _FACTORIES:
        _load_plugins()
    if name in _FACTORIES:
        got = _FACTORIES[name]()
        return got if isinstance(got, str) else as_method(got, name)
    if name == "lps":
        return _lps_unavailable()
    if name not in FIXED_METHODS:
        raise ParamsimError(
            f"unknown method {name!r}; choose from {', '.join(known_method_names())}"
        )
    return get_method(name)


def parse_method_names(text: str | Sequence[str] | None) -> list[str]:
    """Comma list -> names; None -> all fixed methods. Rejects unknown and repeated names."""
    if text is None:
        return list(FIXED_METHODS)
    raw = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in raw if n.strip()]
    if not names:
        raise ParamsimError("--methods is empty; give a comma list such as flat,gram1,chain")
    known = known_method_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ParamsimError(
            f"unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParamsimError(f"method {', '.join(dup)} named twice in --methods")
    return names


# --------------------------------------------------------------------------- zoo


def open_zoo(path: str | Path):
    """Open a zoo directory, with a one-line error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise ParamsimError(
            f"zoo directory {path} does not exist; build one with `paramsim zoo build`"
        )
    from paramsim.zoo import Zoo

    return Zoo.open(path)


def evaluate_zoo(
    zoo: Any,
    method_names: str | Sequence[str] | None = None,
    n_splits: int = 5,
    seed: int = 0,
    *,
    progress: ProgressFn | None = None,
    split_options: Mapping[str, Any] | None = None,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """`evaluate` on a zoo (object or directory) with methods given by name.

    Names that resolve to a reason (e.g. lps not installed) appear under "skipped".
    """
    names = parse_method_names(method_names)
    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    if isinstance(zoo, (str, Path)):
        zoo_name = Path(zoo).name
        zoo = open_zoo(zoo)
    else:
        zoo_name = str(getattr(zoo, "path", getattr(zoo, "name", "zoo")))
        zoo_name = Path(zoo_name).name or zoo_name
    task_ids = np.asarray(zoo.task_ids, dtype=np.int64)
    model_tasks = [zoo.tasks[int(t)] for t in task_ids]
    splits = make_splits(task_ids, n_splits=n_splits, seed=seed, **dict(split_options or {}))

    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    for name in names:
        got = resolve_method(name)
        if isinstance(got, str):
            skipped[name] = got
        else:
            methods[name] = got
    needs_data = any(not getattr(m, "weights_only", True) for m in methods.values())
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
        methods,
        splits,
        context,
        zoo_name=zoo_name,
        progress=progress,
        **evaluate_options,
    )
    results["skipped"] = {**skipped, **results["skipped"]}
    results["load_seconds"] = load_seconds
    order = {n: i for i, n in enumerate(names)}
    results["method_order"] = sorted(
        list(results["methods"]) + list(results["skipped"]), key=lambda n: order.get(n, 1e9)
    )
    return results
