"""Task splits: which tasks train, which validate, which are held out, per random split.

A split divides tasks, never models of one task, so retrieval measures generalisation to
tasks the metric has not seen. Per split:

- test tasks (about `test_fraction` of all tasks): all their models are `test_ids`; by
  default every one queries all the others (`query_ids == gallery_ids == test_ids`), or with
  `n_queries=k` k models per task query and the rest form the gallery;
- validation tasks, carved from the remaining tasks, for a learned method's early stopping;
- training tasks: `train_ids` train the metric and serve as references for seen-task
  classification; `seen_ids` (about `seen_fraction` of each training task's models) are
  withheld from training and classified.

`make_class_splits` holds out classes instead of tasks: the held-out tasks are every task
that touches one of K held-out classes, and validation and training tasks come only from
the other classes, so a learned method is scored on classes it has never seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from paramsim.data import Task, task_key
from paramsim.errors import ParamsimError

MAX_SPLITS = 1000  # bounds --splits: each split refits every learned method


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
    holdout: str = "tasks"  # "tasks": new tasks of known classes; "classes": unseen classes
    heldout_classes: tuple[int, ...] = ()  # classes no training or validation task touches

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


def _check_common(n_splits: int, val_fraction: float, seen_fraction: float, n_queries) -> None:
    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    if n_splits > MAX_SPLITS:
        raise ParamsimError(f"--splits must be at most {MAX_SPLITS}, got {n_splits}")
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    _check_fraction("seen_fraction", seen_fraction, allow_zero=True)
    if n_queries is not None and n_queries < 1:
        raise ParamsimError(f"n_queries must be at least 1 (or None for all), got {n_queries}")


def _tup(a) -> tuple[int, ...]:
    return tuple(int(x) for x in np.sort(np.asarray(a, dtype=np.int64)))


def _split(
    index: int,
    seed: int,
    rng: np.random.Generator,
    members: dict[int, np.ndarray],
    test_t: np.ndarray,
    val_t: np.ndarray,
    train_t: np.ndarray,
    seen_fraction: float,
    n_queries: int | None,
    holdout: str = "tasks",
    heldout_classes: Sequence[int] = (),
) -> Split:
    """Model ids of one split, given its test, validation and training tasks."""
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
    val_ids = np.concatenate([members[int(t)] for t in val_t]) if len(val_t) else np.zeros(0, int)
    return Split(
        index=index,
        seed=seed,
        train_tasks=_tup(train_t),
        val_tasks=_tup(val_t),
        test_tasks=_tup(test_t),
        train_ids=_tup(train_ids),
        val_ids=_tup(val_ids),
        seen_ids=_tup(seen_ids),
        test_ids=_tup(test_ids),
        query_ids=_tup(queries),
        gallery_ids=_tup(gallery),
        holdout=holdout,
        heldout_classes=_tup(heldout_classes),
    )


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
    _check_common(n_splits, val_fraction, seen_fraction, n_queries)
    _check_fraction("test_fraction", test_fraction)
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
        splits.append(
            _split(i, seed, rng, members, test_t, val_t, train_t, seen_fraction, n_queries)
        )
    return splits


def default_classes_out(n_classes: int) -> int:
    """Held-out classes when none are asked for: a fifth of the classes (2 of 10), at least 1."""
    return max(1, round(n_classes / 5))


def make_class_splits(
    model_tasks: Sequence[Task],
    n_splits: int = 5,
    seed: int = 0,
    n_classes_out: int | None = None,
    n_queries: int | None = None,
    val_fraction: float = 0.2,
    seen_fraction: float = 0.4,
) -> list[Split]:
    """Held-out-classes splits: split i holds out `n_classes_out` classes drawn from numpy's
    generator seeded [seed, i] (every split a different class set).

    Held-out tasks are all tasks that touch a held-out class; validation and training tasks
    are drawn from the tasks among the other classes only, so a learned method never sees a
    held-out class. Task ids follow `index_tasks(model_tasks)`.
    """
    _check_common(n_splits, val_fraction, seen_fraction, n_queries)
    labels, tasks = index_tasks(model_tasks)
    classes = sorted(set().union(*(t.classes for t in tasks)))
    k = default_classes_out(len(classes)) if n_classes_out is None else n_classes_out
    if not 1 <= k <= len(classes) - 2:
        raise ParamsimError(
            f"--classes must be between 1 and {len(classes) - 2} (the zoo's tasks use "
            f"{len(classes)} classes and training needs at least 2), got {k}"
        )
    n_sets = math.comb(len(classes), k)
    if n_splits > n_sets:
        raise ParamsimError(
            f"--splits {n_splits} asks for more class sets than the {n_sets} ways to hold out "
            f"{k} of {len(classes)} classes; use at most {n_sets} splits"
        )
    members = {t: np.flatnonzero(labels == t) for t in range(len(tasks))}
    drawn: set[tuple[int, ...]] = set()
    splits = []
    for i in range(n_splits):
        rng = np.random.default_rng([seed, i])
        held = tuple(sorted(int(c) for c in rng.choice(classes, k, replace=False)))
        while held in drawn:  # every split a different class set
            held = tuple(sorted(int(c) for c in rng.choice(classes, k, replace=False)))
        drawn.add(held)
        touch = np.asarray([bool(t.classes & set(held)) for t in tasks])
        test_t = np.flatnonzero(touch)
        rest = rng.permutation(np.flatnonzero(~touch))
        if len(test_t) < 2 or len(rest) < 1:
            fix = (
                "hold out more --classes, or try another --seed"
                if len(test_t) < 2
                else "hold out fewer --classes"
            )
            raise ParamsimError(
                f"holding out classes {list(held)} leaves {len(test_t)} held-out tasks (at "
                f"least 2 needed) and {len(rest)} training tasks (at least 1); {fix}"
            )
        n_val = min(round(val_fraction * len(rest)), len(rest) - 1)
        val_t, train_t = np.sort(rest[:n_val]), np.sort(rest[n_val:])
        splits.append(
            _split(
                i,
                seed,
                rng,
                members,
                test_t,
                val_t,
                train_t,
                seen_fraction,
                n_queries,
                holdout="classes",
                heldout_classes=held,
            )
        )
    return splits
