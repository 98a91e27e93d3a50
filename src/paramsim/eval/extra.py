"""Extra training models (e.g. a zoo of group tasks) for learned methods, and the guard that
keeps them from leaking a split's held-out side into training.

Per split an extra model is dropped when
- its task is one of the split's held-out or validation tasks (either side order);
- its task touches a held-out class (the held-out-classes protocol);
- it is one of the zoo's own models that the split withholds from training (held-out,
  validation or seen-task test models), recognised by its weights, not its task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from paramsim.data import Task, task_key
from paramsim.weights import Network


def network_digest(net: Network) -> str:
    """sha256 of a network's structure and parameter values: the same model read from two
    zoos gives the same digest."""
    h = hashlib.sha256(repr(net.signature()).encode())
    for layer in net.layers:
        for t in (layer.weight, layer.bias):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class ExtraModels:
    """Models that learned methods may also train on, one task per model."""

    networks: Sequence[Network]
    tasks: Sequence[Task]
    source: str = ""
    _digests: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.networks) != len(self.tasks):
            raise ValueError(f"{len(self.networks)} extra networks but {len(self.tasks)} tasks")

    def __len__(self) -> int:
        return len(self.networks)

    @property
    def digests(self) -> list[str]:
        if self._digests is None:
            self._digests = [network_digest(n) for n in self.networks]
        return self._digests


def allowed_extra(
    extra: ExtraModels,
    *,
    exclude_tasks: Iterable[Task],
    exclude_classes: Iterable[int] = (),
    withheld: Iterable[str] = (),
) -> list[int]:
    """Indices of the extra models that may train: not of an excluded task (compared by
    `task_key`), touching no excluded class, and not a withheld model (by digest)."""
    banned = {task_key(t) for t in exclude_tasks}
    classes = set(exclude_classes)
    withheld = set(withheld)
    keep = []
    for i, t in enumerate(extra.tasks):
        if task_key(t) in banned or t.classes & classes:
            continue
        if withheld and extra.digests[i] in withheld:
            continue
        keep.append(i)
    return keep


def compatible(method, networks: Sequence[Network], extra_nets: Sequence[Network]) -> list[int]:
    """Indices of extra networks the method can train on beside `networks` (its `check`
    accepts them), tested once per architecture."""
    verdict: dict[tuple, bool] = {}
    keep = []
    for i, net in enumerate(extra_nets):
        sig = net.signature()
        if sig not in verdict:
            verdict[sig] = not method.check([*networks[:1], net])
        if verdict[sig]:
            keep.append(i)
    return keep


def withheld_digests(networks: Sequence[Network], ids: Sequence[int]) -> set[str]:
    return {network_digest(networks[i]) for i in ids}


__all__ = ["ExtraModels", "allowed_extra", "compatible", "network_digest", "withheld_digests"]
