"""`paramsim relate | transfer | reproduce`: use the similarity on a zoo."""

from __future__ import annotations

import time
from pathlib import Path

import click

from paramsim.cli.common import quiet_option, set_threads, threads_option
from paramsim.errors import ParamsimError

model_option = click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="A saved LPS model (from `paramsim fit`).",
)
method_option = click.option(
    "--method",
    "methods",
    default=None,
    help="Comma list of method names (fixed ones such as chain,gram1, or lps, which is then "
    "fitted on the zoo).",
)


def _names(text: str | None) -> list[str]:
    from paramsim.methods import parse_method_names

    return parse_method_names(text) if text else []


def _similarities(model_dir: Path | None, methods: str | None) -> dict:
    from paramsim.use._common import load_similarity

    names = _names(methods)
    if model_dir is None and not names:
        raise ParamsimError("give --model DIR (a saved LPS model) or --method NAME[,NAME...]")
    sims = {}
    if model_dir is not None:
        sims["lps" if "lps" not in names else "lps-saved"] = load_similarity(model=model_dir)
    for name in names:
        sims[name] = load_similarity(method=name)
    return sims


def _open(zoo: Path):
    from paramsim.zoo import open_zoo

    return open_zoo(zoo)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise ParamsimError(f"{what} must be positive integers such as 1,5; got {text!r}")
    return vals


@click.command("relate")
@click.argument("zoo", type=click.Path(path_type=Path))
@model_option
@method_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@quiet_option
def relate_command(zoo, model_dir, methods, out_dir, seed, threads, quiet):
    """Task-relation matrix, dendrogram and model map of ZOO, next to the ground truth.

    Writes relation.json, relation_matrix.png, dendrogram.png and map.png to --out (one
    sub-directory per method when several are given).
    """
    from paramsim.use.relate import relate, summary_lines, write_relation

    set_threads(threads)
    store = _open(zoo)
    sims = _similarities(model_dir, methods)
    nets = store.networks()
    for name, sim in sims.items():
        t0 = time.perf_counter()
        res = relate(store, sim, seed=seed, networks=nets)
        target = out_dir if len(sims) == 1 else out_dir / name
        written = write_relation(res, target)
        for line in summary_lines(res):
            click.echo(line)
        if not quiet:
            click.echo(
                f"{name}: {time.perf_counter() - t0:.1f} s; wrote {', '.join(written)} to {target}"
            )


@click.command("transfer")
@click.argument("zoo", type=click.Path(path_type=Path))
@model_option
@method_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--shots", default="1,5", show_default=True, help="K examples per class.")
@click.option("--repeats", type=int, default=2, show_default=True, help="Draws per task.")
@click.option("--finetune-steps", type=int, default=40, show_default=True)
@click.option(
    "--finetune",
    type=click.Choice(["all", "head"]),
    default="all",
    show_default=True,
    help="Train all layers or only the output layer.",
)
@click.option(
    "--head",
    type=click.Choice(["reset", "keep"]),
    default="reset",
    show_default=True,
    help="Zero the source's output layer before fine-tuning, or keep it.",
)
@click.option("--folds", type=int, default=3, show_default=True, help="For learned methods.")
@click.option(
    "--select",
    type=click.Choice(["task", "model"]),
    default="model",
    show_default=True,
    help="Primary selection rule: the best task by mean similarity of its models, then its "
    "most similar model; or the single most similar model. Both are reported.",
)
@click.option(
    "--select-top",
    type=int,
    default=0,
    show_default=True,
    help="Task rule: average a task's M most similar models only (0: all of them).",
)
@click.option("--targets", default=None, help="Comma list of target tasks (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@quiet_option
def transfer_command(
    zoo,
    model_dir,
    methods,
    out_dir,
    shots,
    repeats,
    finetune_steps,
    finetune,
    head,
    folds,
    select,
    select_top,
    targets,
    seed,
    threads,
    quiet,
):
    """Evaluate source-model selection for few-shot transfer on every task of ZOO."""
    from paramsim.use.transfer import (
        TransferConfig,
        evaluate_transfer,
        format_transfer_table,
        write_transfer,
    )

    set_threads(threads)
    store = _open(zoo)
    sims = _similarities(model_dir, methods)
    names = None
    if targets:
        from paramsim.data import Task

        names = tuple(Task.parse(t).name for t in targets.split(",") if t.strip())
    cfg = TransferConfig(
        shots=_ints(shots, "--shots"),
        repeats=repeats,
        finetune_steps=finetune_steps,
        finetune=finetune,
        head=head,
        folds=folds,
        select=select,
        select_top=select_top,
        targets=names,
        seed=seed,
    )
    started = time.perf_counter()
    res = evaluate_transfer(
        store, sims, cfg, progress=None if quiet else lambda m: click.echo(m, err=True)
    )
    written = write_transfer(res, out_dir)
    click.echo(format_transfer_table(res))
    click.echo(f"{time.perf_counter() - started:.1f} s; wrote {', '.join(written)} to {out_dir}")


@click.command("reproduce")
@click.option(
    "--out",
    "out_dir",
    default="report",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Report directory (README.md, eval/, relate/, transfer/, and zoo/ unless --zoo).",
)
@click.option(
    "--zoo",
    "zoo_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Use (or build) the zoo here instead of OUT/zoo.",
)
@click.option("--quick", is_flag=True, help="A reduced run (tiny zoo, one split, K=1).")
@click.option("--splits", type=int, default=None, help="Task splits for eval (default 3).")
@threads_option
@quiet_option
def reproduce_command(out_dir, zoo_dir, quick, splits, threads, quiet):
    """Build the default zoo, evaluate every method, map the task relations, evaluate
    transfer, and write OUT/README.md. Finished stages are reused."""
    from dataclasses import replace

    from paramsim.use.reproduce import ReproduceConfig, reproduce

    set_threads(threads)
    cfg = ReproduceConfig.quick() if quick else ReproduceConfig()
    if splits is not None:
        if splits < 1:
            raise ParamsimError(f"--splits must be at least 1, got {splits}")
        cfg = replace(cfg, splits=splits)
    started = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - started:6.1f}s] {msg}", err=True)

    reproduce(out_dir, zoo_dir, cfg, say)
    click.echo(f"report: {out_dir / 'README.md'} ({time.perf_counter() - started:.1f} s)")


def register(cli: click.Group) -> None:
    cli.add_command(relate_command)
    cli.add_command(transfer_command)
    cli.add_command(reproduce_command)
