"""Datasets (bundled, IDX files, CIFAR pickles) and the binary tasks drawn from them."""

from paramsim.data.datasets import Dataset, load_cifar, load_dataset, load_digits, load_idx
from paramsim.data.tasks import (
    Task,
    canonical_name,
    check_tasks_have_examples,
    group_tasks,
    pair_tasks,
    relation_matrix,
    task_key,
)

__all__ = [
    "Dataset",
    "Task",
    "canonical_name",
    "check_tasks_have_examples",
    "group_tasks",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_idx",
    "pair_tasks",
    "relation_matrix",
    "task_key",
]
