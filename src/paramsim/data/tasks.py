"""Binary tasks over class groups; output unit k of a model stands for side k of its task."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from paramsim.data.datasets import Dataset
from paramsim.errors import ParamsimError


@dataclass(frozen=True)
class Task:
    """Classes on each side of a binary task: `sides[k]` are the classes of output unit k."""

    sides: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def name(self) -> str:
        return " vs ".join("+".join(str(c) for c in side) for side in self.sides)

    @property
    def classes(self) -> frozenset[int]:
        return frozenset(self.sides[0]) | frozenset(self.sides[1])

    def shared_classes(self, other: Task) -> int:
        """Ground-truth relation: how many classes two tasks have in common."""
        return len(self.classes & other.classes)

    def rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which examples of a split (by their class labels `y`) this task reads, in split
        order, and their side labels: the task's data without copying any input."""
        label = torch.full_like(y, -1)
        for k, side in enumerate(self.sides):
            for c in side:
                label[y == c] = k
        keep = torch.nonzero(label >= 0).squeeze(1)
        return keep, label[keep]

    def subset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples of this task's classes, relabelled by side."""
        rows, side = self.rows(y)
        return x[rows], side

    def train_data(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        return self.subset(ds.x_train, ds.y_train)

    def test_data(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        return self.subset(ds.x_test, ds.y_test)

    @classmethod
    def parse(cls, text: str) -> Task:
        """'3-7', '3v7' or '3 vs 7' (the name paramsim prints) is a pair; '1+2v3' groups
        classes on one side."""
        squeezed = text.replace(" ", "").replace("vs", "v")
        sep = "v" if "v" in squeezed else "-"
        parts = squeezed.split(sep)
        try:
            sides = tuple(tuple(int(c) for c in p.split("+")) for p in parts)
        except ValueError:
            sides = ()
        if len(sides) != 2 or not all(sides) or set(sides[0]) & set(sides[1]):
            raise ParamsimError(
                f"cannot read task {text!r}; write a pair as 3-7 or groups as 1+2v3"
            )
        return cls(sides)  # type: ignore[arg-type]


TaskKey = tuple[tuple[int, ...], ...]


def task_key(task: Task) -> TaskKey:
    """A task's identity regardless of output order: {a} vs {b} and {b} vs {a} ask the same
    question, so every "is this the same task" test in paramsim compares these keys."""
    return tuple(sorted(tuple(sorted(s)) for s in task.sides))


def canonical_name(task: Task | str) -> str:
    """The side-order-free name of a task ("1+2+3 vs 5+7"), the form a saved LPS model records
    its training tasks in. A display name ("5+7 vs 1+2+3") is read back into its key first;
    a string that is not a task name comes back unchanged."""
    if isinstance(task, str):
        try:
            key = tuple(
                sorted(tuple(sorted(int(c) for c in s.split("+"))) for s in task.split(" vs "))
            )
        except ValueError:
            return task
    else:
        key = task_key(task)
    return " vs ".join("+".join(map(str, side)) for side in key)


def pair_tasks(n_classes: int, which: str | Iterable[str] = "all") -> list[Task]:
    """Class-pair tasks: every pair, the disjoint pairs (2i, 2i+1), or a given list."""
    if which == "all":
        return [Task(((a,), (b,))) for a, b in itertools.combinations(range(n_classes), 2)]
    if which == "disjoint":
        return [Task(((2 * i,), (2 * i + 1,))) for i in range(n_classes // 2)]
    if isinstance(which, str):
        which = [w for w in which.split(",") if w]
    tasks = [Task.parse(w) for w in which]
    for t in tasks:
        if max(t.classes) >= n_classes:
            raise ParamsimError(f"task {t.name} uses a class >= {n_classes}, the dataset's count")
    return tasks


def group_tasks(n_classes: int, n_tasks: int, seed: int = 0) -> list[Task]:
    """Binary tasks between small class groups ({a,b} vs {c}, {a,b} vs {c,d}, ...).

    They give a metric many varied training tasks. Pure pairs are excluded so that a
    held-out pair task never appears here.
    """
    rng = random.Random(seed)
    shapes = [(2, 1), (1, 2), (2, 2), (3, 1), (1, 3), (3, 2), (2, 3)]
    seen: set[tuple] = set()
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n_tasks:
        attempts += 1
        if attempts > 100 * n_tasks:
            raise ParamsimError(
                f"cannot draw {n_tasks} distinct group tasks from {n_classes} classes"
            )
        a, b = rng.choice(shapes)
        if a + b > n_classes:
            continue
        drawn = rng.sample(range(n_classes), a + b)
        task = Task((tuple(sorted(drawn[:a])), tuple(sorted(drawn[a:]))))
        if task_key(task) in seen:  # {a,b} vs {c} is {c} vs {a,b}: one task, drawn once
            continue
        seen.add(task_key(task))
        tasks.append(task)
    return tasks


def check_tasks_have_examples(tasks: Iterable[Task], dataset: Dataset) -> None:
    """Refuse a task with a class that has no example in the training or the test split.

    A data set's class count is its largest label plus one, so a label set with gaps (IDX
    files labelled 1..26) names classes without any image. A task on such a class would
    train a model on one side only and record it as perfect on the other side's absence.
    """
    present = {
        split: set(torch.unique(y).tolist())
        for split, y in (("training", dataset.y_train), ("test", dataset.y_test))
    }
    for task in tasks:
        for split, classes in present.items():
            missing = sorted(task.classes - classes)
            if missing:
                raise ParamsimError(
                    f"task {task.name}: data set {dataset.name} has no {split} example of "
                    f"class {', '.join(map(str, missing))}; choose tasks of the classes it "
                    "holds (--tasks 1-2,3-4)"
                )


def relation_matrix(tasks: Sequence[Task]) -> torch.Tensor:
    """Number of shared classes for every pair of tasks."""
    n = len(tasks)
    out = torch.zeros(n, n, dtype=torch.int64)
    for i in range(n):
        for j in range(n):
            out[i, j] = tasks[i].shared_classes(tasks[j])
    return out
