"""Which torch device a command computes on: checked once, before any work, so that a
missing GPU is one line of error instead of a CUDA traceback halfway through."""

from __future__ import annotations

import torch

from paramsim.errors import ParamsimError


def parse_device(device: str | torch.device | None = None) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:N"; None is cpu) as a torch.device, without asking
    whether this machine has it (a Ray cluster's nodes may)."""
    name = "cpu" if device is None else str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ParamsimError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    return dev


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:N"; None is cpu) as a torch.device that exists here."""
    dev = parse_device(device)
    name = str(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamsimError(
                f"--device {name} asked for, but CUDA is not available here; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParamsimError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices; "
                "use cuda:0 to cuda:N-1"
            )
    return dev
