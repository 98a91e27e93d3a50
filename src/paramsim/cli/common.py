"""The one vocabulary of options the commands share, and what each command's --out holds.

- `--methods NAME[,NAME...]`: a comma list wherever several methods can run (`-m` for short;
  `--method` is kept, hidden, as the old spelling). `fit` trains one, so it takes `--method`.
- `--extra-zoo DIR`: repeatable wherever LPS is trained.
- `--seed`, `--threads`, `--quiet`: on every command that trains or computes.
- `--out` with `--overwrite`: an existing output of the same command is replaced only with
  `--overwrite`, and anything else that exists is refused (see `paramsim.atomic`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import torch

from paramsim.atomic import OutputKind
from paramsim.errors import ParamsimError
from paramsim.zoo.store import ZOO_OUTPUT

MAX_SEED = 2**32 - 1  # numpy's legacy bound; every generator paramsim uses accepts it
MAX_THREADS = 4096

# what each command writes into --out: how an earlier output of ours is recognised
FIT_OUTPUT = OutputKind("an LPS model", ("lps.json",), ("lps.json", "lps.safetensors"))
INDEX_OUTPUT = OutputKind("an index", ("index.json",), ("index.json", "index.faiss", "items.npz"))
EVAL_OUTPUT = OutputKind(
    "an eval report", ("results.json",), ("results.json", "results.md", "cmc.png", "relation.png")
)
RELATION_FILES = ("relation.json", "relation_matrix.png", "dendrogram.png", "map.png")
RELATE_OUTPUT = OutputKind("a relation map", ("relation.json",), RELATION_FILES, nested=True)
TRANSFER_OUTPUT = OutputKind(
    "a transfer report",
    ("transfer.json",),
    ("transfer.json", "transfer.png", "transfer-matrices.npz"),
)
REPORT_MARKER = "reproduce.json"
REPORT_OUTPUT = OutputKind(
    "a reproduce report",
    (REPORT_MARKER, "timings.json"),
    (REPORT_MARKER, "timings.json", "README.md"),
    # each stage's folder is looked into: a file of the user's in one is never removed
    subdirs=(
        ("zoo", ZOO_OUTPUT),
        ("eval", EVAL_OUTPUT),
        ("relate", RELATE_OUTPUT),
        ("transfer", TRANSFER_OUTPUT),
    ),
)


def set_threads(threads: int | None) -> None:
    """Small kernels on few cores are load-sensitive; pick the count deliberately."""
    if threads:
        torch.set_num_threads(threads)


def set_seed(seed: int) -> None:
    """Seed torch's and numpy's global generators, for anything that draws from them."""
    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)


threads_option = click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help="Torch CPU threads (default: torch's choice).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace --out when it holds an earlier output of this command.",
)


def seed_option(help: str = "Seed of every random draw.") -> Callable:
    return click.option(
        "--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help=help
    )


def compute_options(seed_help: str = "Seed of every random draw.") -> Callable:
    """--seed, --threads and --quiet, which every computing command takes."""

    def deco(f: Callable) -> Callable:
        return seed_option(seed_help)(threads_option(quiet_option(f)))

    return deco


extra_zoo_option = click.option(
    "--extra-zoo",
    "extra_zoo",
    multiple=True,
    help="More training models for LPS (e.g. a digits-groups zoo); repeatable. Models whose "
    "task could be a held-out task are dropped.",
)


def methods_option(help: str, alias: str | None = "--method") -> Callable:
    """`--methods` (a comma list; `-m`), with `alias` accepted, hidden, as the old spelling.

    The command receives the text as `methods` (None when neither was given).
    """

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            old = kwargs.pop("methods_alias", None)
            if old is not None:
                if kwargs.get("methods") is not None:
                    raise ParamsimError(f"give --methods once ({alias} is its old spelling)")
                kwargs["methods"] = old
            return f(*args, **kwargs)

        out = click.option("--methods", "-m", "methods", default=None, help=help)(wrapper)
        if alias:
            out = click.option(alias, "methods_alias", default=None, hidden=True)(out)
        return out

    return deco
