"""Options and helpers shared by the command modules."""

from __future__ import annotations

import click
import torch


def set_threads(threads: int | None) -> None:
    """Small kernels on few cores are load-sensitive; pick the count deliberately."""
    if threads:
        torch.set_num_threads(threads)


threads_option = click.option(
    "--threads", type=int, default=None, help="Torch CPU threads (default: torch's choice)."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
