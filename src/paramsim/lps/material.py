"""What an LPS fit takes from the zoo's directory beyond the models themselves.

Three things, all used only while fitting (an embedding still reads weights alone):

* the auxiliary group-task zoo (`paramsim.lps.auxiliary`), more tasks to learn from;
* training images of the zoo's data set that start the learned probes. Probes that start as
  uniform noise sit far from the images the models were trained on, where a CNN's answer says
  little about its task (on Fashion-MNIST CNNs, noise-started probes retrieved worse than
  fixed synthetic ones); started on real images they read each model where it was trained;
* the principal directions of those images, where the weight branch's input projections
  start. Gradient steps move a first layer only inside the span of its training inputs, so
  on 784 pixels the top 80 directions hold what training wrote, while random ones hold
  mostly the random start.

All keep to the classes of the training tasks, so a class held out of training (the
held-out-classes protocol, or a user's exclusion) never reaches the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from paramsim.data import Task
from paramsim.lps.config import FitConfig, LPSConfig
from paramsim.stamps import files_stamp
from paramsim.weights import Network

BASIS_IMAGES = 4096  # images whose second moment gives the input basis


def probe_start_images(
    x: torch.Tensor, y: torch.Tensor, classes: frozenset[int], n: int, seed: int
) -> torch.Tensor:
    """`n` images of `x` (N, C, H, W) whose label `y` is in `classes`, spread evenly over
    those classes (round robin, each class's images in a seeded random order); fewer when
    there are fewer such images."""
    gen = torch.Generator().manual_seed(seed)
    per_class = []
    for c in sorted(classes):
        idx = torch.nonzero(y == c).flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=gen)])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(depth < len(p) for p in per_class):
        for p in per_class:
            if depth < len(p) and len(chosen) < n:
                chosen.append(int(p[depth]))
        depth += 1
    return x[torch.tensor(chosen, dtype=torch.long)].float().clone()


def input_basis(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: frozenset[int],
    max_images: int,
    seed: int,
    bias: bool = True,
) -> torch.Tensor | None:
    """(pixels [+ 1], pixels [+ 1]): eigenvectors of the second moment of [image; 1] (of
    the image alone without `bias`) over up to `max_images` images of `classes` (spread over
    them), by falling eigenvalue, each signed so its largest entry is positive. The 1 is the
    bias row of the weight chain. None when no image has one of `classes`."""
    imgs = probe_start_images(x, y, classes, max_images, seed)
    if not len(imgs):
        return None
    flat = imgs.reshape(len(imgs), -1).double()
    if bias:
        flat = torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], 1)
    values, vectors = torch.linalg.eigh(flat.T @ flat / len(flat))
    vectors = vectors[:, torch.argsort(values, descending=True)]
    top = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[top, torch.arange(vectors.shape[1])])
    return (vectors * torch.where(signs == 0, 1.0, signs)).float()


def zoo_training_set(path: str | Path) -> tuple[tuple[Network, ...], tuple[Task, ...]]:
    """Every model of the zoo at `path` and its task, read once per process while the zoo's
    files are unchanged (an eval fits once per split on the same auxiliary and extra zoos;
    a zoo rebuilt in place, in a notebook, is read again)."""
    resolved = str(Path(path).resolve())
    return _zoo_training_set(resolved, files_stamp(resolved))


@lru_cache(maxsize=4)
def _zoo_training_set(path: str, version: tuple) -> tuple[tuple[Network, ...], tuple[Task, ...]]:
    from paramsim.zoo import open_zoo

    z = open_zoo(path)
    return tuple(z.networks()), tuple(z.tasks[int(t)] for t in z.task_ids)


@dataclass
class FitMaterial:
    """Extra training models and probe start images for one fit."""

    networks: list[Network] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    probe_images: torch.Tensor | None = None
    input_basis: torch.Tensor | None = None


def zoo_material(
    zoo_dir: str | Path,
    fit_config: FitConfig,
    train_tasks: Sequence[Task],
    n_probes: int,
    progress: bool = False,
    basis_for: LPSConfig | None = None,
) -> FitMaterial:
    """The auxiliary models, probe start images and input basis a default fit on `zoo_dir`
    uses, limited to the classes of `train_tasks`; what `fit_config` turns off, `n_probes` 0
    (a network without the function branch) or a `basis_for` config that does not project
    its inputs (or None: no MLP to read) is left empty."""
    got = FitMaterial()
    seen = frozenset().union(*(t.classes for t in train_tasks))
    if fit_config.aux_tasks > 0:
        from paramsim.lps.auxiliary import auxiliary_zoo, usable_auxiliary

        path = auxiliary_zoo(
            zoo_dir, fit_config.aux_tasks, fit_config.aux_models_per_task, progress
        )
        networks, tasks = usable_auxiliary(*zoo_training_set(path), train_tasks)
        got.networks, got.tasks = list(networks), list(tasks)
    want_probes = fit_config.probe_init == "data" and n_probes > 0
    want_basis = (
        fit_config.basis_init == "data" and basis_for is not None and basis_for.projects_inputs
    )
    if want_probes or want_basis:
        from paramsim.zoo import open_zoo

        ds = open_zoo(zoo_dir).dataset()  # read once per process, shared with the caller's
        if want_probes:
            got.probe_images = probe_start_images(
                ds.x_train, ds.y_train, seen, n_probes, fit_config.seed
            )
        if want_basis:
            assert basis_for is not None
            basis = input_basis(
                ds.x_train, ds.y_train, seen, BASIS_IMAGES, fit_config.seed, basis_for.bias
            )
            if basis is not None and basis.shape[0] == basis_for.input_rows:
                got.input_basis = basis[:, : basis_for.kept_directions]
    return got
