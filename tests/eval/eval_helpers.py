"""Synthetic models for evaluation tests: same-task models are noisy copies of a task base."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paramsim.data import Task
from paramsim.features.base import Context, Method
from paramsim.weights import Layer, Network

TASKS = [Task(((a,), (b,))) for a, b in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (6, 7)]]


def synthetic_networks(
    tasks: Sequence[Task] = TASKS, per_task: int = 4, noise: float = 0.3, seed: int = 0
) -> tuple[list[Network], list[Task]]:
    """MLPs 16-8-2: a random base per task plus Gaussian noise per model."""
    g = torch.Generator().manual_seed(seed)
    nets, model_tasks = [], []
    for task in tasks:
        w1, w2 = torch.randn(8, 16, generator=g), torch.randn(2, 8, generator=g)
        for _ in range(per_task):
            a = w1 + noise * torch.randn(8, 16, generator=g)
            b = w2 + noise * torch.randn(2, 8, generator=g)
            layers = (
                Layer("linear", a, torch.zeros(8), post=("relu",)),
                Layer("linear", b, torch.zeros(2)),
            )
            nets.append(Network(layers, (1, 4, 4), ("flatten",)))
            model_tasks.append(task)
    return nets, model_tasks


class FlatMethod(Method):
    """Cosine of flattened weights: enough to separate the synthetic tasks."""

    name = "flat-test"

    def embed(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        return np.stack(
            [torch.cat([lay.weight.flatten() for lay in n.layers]).numpy() for n in networks]
        )


class NoiseMethod(Method):
    """Random similarity: scores must sit near chance."""

    name = "noise-test"

    def similarity(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        rng = np.random.default_rng(context.seed)
        s = rng.standard_normal((len(networks), len(networks)))
        return s + s.T


class RecordingLearned(FlatMethod):
    """A learned method that remembers which tasks it was fitted on."""

    name = "learned-test"
    learned = True
    fits: list[set] = []  # shared across deep copies on purpose

    def __init__(self) -> None:
        self.fitted = False

    def fit(self, networks, tasks, context, val=None):
        assert not self.fitted, "evaluate must fit a fresh copy per split"
        self.fitted = True
        from paramsim.eval.extra import network_digest

        RecordingLearned.fits.append(
            {
                "train": set(tasks),
                "val": set(val[1]) if val else set(),
                "n": len(networks),
                "digests": [network_digest(n) for n in networks],
            }
        )
        return self

    def embed(self, networks, context):
        assert self.fitted, "similarity before fit"
        return super().embed(networks, context)


class BrokenFit(RecordingLearned):
    """A learned method with a bug in its fit."""

    name = "broken-test"

    def fit(self, networks, tasks, context, val=None):
        return 1 / 0


class NeedsPackage(FlatMethod):
    """A method whose fit imports a module that is not installed."""

    name = "needs-test"
    learned = True

    def __init__(self, module: str = "nosuchpkg_xyz") -> None:
        self.module = module

    def fit(self, networks, tasks, context):
        import importlib

        importlib.import_module(self.module)
        return self


class NeedsCNN(Method):
    name = "cnn-only"

    def check(self, networks):
        return "needs convolutional networks"


class FakeZoo:
    def __init__(self, tasks: Sequence[Task] = TASKS, per_task: int = 3):
        self.nets, model_tasks = synthetic_networks(tasks, per_task=per_task)
        self.tasks = list(dict.fromkeys(model_tasks))
        self.task_ids = np.array([self.tasks.index(t) for t in model_tasks])
        self.path = "/tmp/fake-zoo"

    def networks(self, ids=None):
        return self.nets

    def dataset(self):
        raise AssertionError("weights-only methods must not load the dataset")
