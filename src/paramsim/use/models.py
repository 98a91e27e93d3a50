"""Models named on a command line: zoo directories, `ZOO:ID` references and checkpoint files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from paramsim.errors import ParamsimError


def is_zoo(path: str | Path) -> bool:
    """A zoo directory is recognised by its registry."""
    p = Path(path)
    return p.is_dir() and (p / "registry.sqlite").is_file()


@dataclass
class ModelSet:
    """Networks with their ids, task names ("" when unknown) and the reference they came from."""

    networks: list = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # "ZOO:ID" or the file's path


def resolve_models(items: Sequence[str]) -> ModelSet:
    """Every model the references name, in order: a zoo directory gives all its models, `ZOO:ID`
    one of them, a file one checkpoint (ids of files count up from 0 in argument order)."""
    from paramsim.weights import load
    from paramsim.zoo import open_zoo

    out = ModelSet()
    for item in items:
        path = Path(item)
        head, _, tail = str(item).rpartition(":")
        if is_zoo(path):
            zoo = open_zoo(path)
            out.networks += zoo.networks()
            out.ids += [r.id for r in zoo.records]
            out.tasks += [r.task.name for r in zoo.records]
            out.labels += [f"{item}:{r.id}" for r in zoo.records]
        elif head and tail.isdigit() and is_zoo(head):
            zoo = open_zoo(head)
            mid = int(tail)
            if not 0 <= mid < len(zoo):
                raise ParamsimError(f"{head} has models 0..{len(zoo) - 1}; {mid} is not one")
            out.networks.append(zoo.network(mid))
            out.ids.append(mid)
            out.tasks.append(zoo.record(mid).task.name)
            out.labels.append(str(item))
        elif path.is_file():
            out.networks.append(load(path))
            out.ids.append(len(out.ids))
            out.tasks.append("")
            out.labels.append(str(item))
        else:
            raise ParamsimError(f"{item} is neither a zoo directory, ZOO:ID, nor a checkpoint file")
    if not out.networks:
        raise ParamsimError("no models given")
    return out
