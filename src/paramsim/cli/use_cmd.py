"""`paramsim relate | transfer | reproduce`: use the similarity on a zoo."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from paramsim.atomic import atomic_dir, atomic_write, check_output_dir, replace_in_place
from paramsim.cli.common import (
    RELATE_OUTPUT,
    REPORT_MARKER,
    REPORT_OUTPUT,
    TRANSFER_OUTPUT,
    compute_options,
    methods_option,
    overwrite_option,
    quiet_option,
    seed_option,
    set_seed,
    set_threads,
    threads_option,
)
from paramsim.errors import ParamsimError

model_option = click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="A saved LPS model (from `paramsim fit`).",
)
method_option = methods_option(
    "Comma list of method names (fixed ones such as chain,gram1, or lps, which is then "
    "fitted on the zoo)."
)
MAX_SHOT = 1000
MAX_REPEATS = 1000
MAX_STEPS = 100_000
MAX_SPLITS = 1000


def _names(text: str | None) -> list[str]:
    from paramsim.methods import parse_method_names

    return parse_method_names(text) if text else []


def _similarities(model_dir: Path | None, methods: str | None) -> dict:
    from paramsim.use._common import load_similarity

    names = _names(methods)
    if model_dir is None and not names:
        raise ParamsimError("give --model DIR (a saved LPS model) or --methods NAME[,NAME...]")
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
    if not vals or min(vals) < 1 or max(vals) > MAX_SHOT:
        raise ParamsimError(
            f"{what} must be integers from 1 to {MAX_SHOT} such as 1,5; got {text!r}"
        )
    return vals


@click.command("relate")
@click.argument("zoo", type=click.Path(path_type=Path))
@model_option
@method_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@overwrite_option
@compute_options("Seed of the map layout and of fitting learned methods.")
def relate_command(zoo, model_dir, methods, out_dir, overwrite, seed, threads, quiet):
    """Task-relation matrix, dendrogram and model map of ZOO, next to the ground truth.

    Writes relation.json, relation_matrix.png, dendrogram.png and map.png to --out (one
    sub-directory per method when several are given).
    """
    from paramsim.use.relate import relate, summary_lines, write_relation

    check_output_dir(out_dir, RELATE_OUTPUT, overwrite)  # first: the cheapest refusal
    set_threads(threads)
    set_seed(seed)
    store = _open(zoo)
    sims = _similarities(model_dir, methods)
    with atomic_dir(out_dir, RELATE_OUTPUT, overwrite) as tmp:
        nets = store.networks()
        for name, sim in sims.items():
            t0 = time.perf_counter()
            res = relate(store, sim, seed=seed, networks=nets)
            written = write_relation(res, tmp if len(sims) == 1 else tmp / name)
            for line in summary_lines(res):
                click.echo(line)
            if not quiet:
                target = out_dir if len(sims) == 1 else out_dir / name
                took = time.perf_counter() - t0
                click.echo(f"{name}: {took:.1f} s; wrote {', '.join(written)} to {target}")


@click.command("transfer")
@click.argument("zoo", type=click.Path(path_type=Path))
@model_option
@methods_option(
    "Comma list of selection rules: similarity methods (chain, gram1, lps, ...), "
    "estimators (logme, leep, nce, knn), hybrids BASE+EST@M (lps+logme@10), learned "
    "rankers rank:BASE (rank:chain) and remembered outcomes hist:BASE (hist:lps)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@overwrite_option
@click.option("--shots", default="1,5", show_default=True, help="K examples per class.")
@click.option(
    "--repeats",
    type=click.IntRange(1, MAX_REPEATS),
    default=2,
    show_default=True,
    help="Draws per task.",
)
@click.option("--finetune-steps", type=click.IntRange(1, MAX_STEPS), default=40, show_default=True)
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
@click.option(
    "--folds",
    type=click.IntRange(2, 100),
    default=3,
    show_default=True,
    help="For learned methods.",
)
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
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Task rule: average a task's M most similar models only (0: all of them).",
)
@click.option("--targets", default=None, help="Comma list of target tasks (default: all).")
@click.option(
    "--memory-budget",
    type=click.IntRange(16),
    default=512,
    show_default=True,
    help="MB one stacked run of fine-tunes or forward passes may hold.",
)
@click.option(
    "--sources-per-task",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Candidate sources: this many models of each other task, drawn once for all targets "
    "(0: all). Every candidate is fine-tuned on every draw, so this sets the run time.",
)
@click.option(
    "--val-per-class",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Held-out training examples per class for the validation oracle.",
)
@compute_options("Seed of the K-shot draws, probes, fine-tuning and learned methods.")
def transfer_command(
    zoo,
    model_dir,
    methods,
    out_dir,
    overwrite,
    shots,
    repeats,
    finetune_steps,
    finetune,
    head,
    folds,
    select,
    select_top,
    targets,
    memory_budget,
    sources_per_task,
    val_per_class,
    seed,
    threads,
    quiet,
):
    """Evaluate source-model selection for few-shot transfer on every task of ZOO."""
    from paramsim.use.transfer import (
        TransferConfig,
        evaluate_transfer,
        format_cost_table,
        format_transfer_table,
        write_transfer,
    )
    from paramsim.use.transfer.rules import split_rules

    check_output_dir(out_dir, TRANSFER_OUTPUT, overwrite)  # first: the cheapest refusal
    set_threads(threads)
    set_seed(seed)
    store = _open(zoo)
    sim_names, selectors = split_rules(methods, saved_lps=model_dir is not None)
    sims = _similarities(model_dir, ",".join(sim_names)) if model_dir or sim_names else {}
    if not sims and not selectors:
        raise ParamsimError("give --model DIR (a saved LPS model) or --methods NAME[,NAME...]")
    names = None
    if targets is not None:
        from paramsim.data import Task

        names = tuple(Task.parse(t).name for t in targets.split(",") if t.strip())
        if not names:
            raise ParamsimError("--targets names no task; give e.g. 0-1,2-7 or leave it out")
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
        memory_budget_mb=memory_budget,
        val_per_class=val_per_class,
        sources_per_task=sources_per_task,
        seed=seed,
    )
    started = time.perf_counter()
    say = None if quiet else lambda m: click.echo(m, err=True)
    with atomic_dir(out_dir, TRANSFER_OUTPUT, overwrite) as tmp:
        res = evaluate_transfer(store, sims, cfg, progress=say, selectors=selectors)
        written = write_transfer(res, tmp)
    click.echo(format_transfer_table(res))
    click.echo(format_cost_table(res))
    click.echo(f"{time.perf_counter() - started:.1f} s; wrote {', '.join(written)} to {out_dir}")


@click.command("reproduce")
@click.option(
    "--out",
    "out_dir",
    default="report",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Report directory (README.md, eval/, relate/, transfer/, and zoo/ unless --zoo); "
    "an earlier report here is continued, reusing its finished stages.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start the report in --out afresh; the earlier one is removed once the new one is done.",
)
@click.option(
    "--zoo",
    "zoo_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Use (or build) the zoo here instead of OUT/zoo.",
)
@click.option("--quick", is_flag=True, help="A reduced run (tiny zoo, one split, K=1).")
@click.option(
    "--splits",
    type=click.IntRange(1, MAX_SPLITS),
    default=None,
    help="Task splits for eval (default 3).",
)
@seed_option("Seed of the eval splits and the transfer draws (the zoo keeps its recipe's).")
@threads_option
@quiet_option
def reproduce_command(out_dir, overwrite, zoo_dir, quick, splits, seed, threads, quiet):
    """Build the default zoo, evaluate every method, map the task relations, evaluate
    transfer, and write OUT/README.md. Finished stages are reused."""
    from dataclasses import replace

    from paramsim.use.reproduce import ReproduceConfig, reproduce

    check_output_dir(out_dir, REPORT_OUTPUT, overwrite, resume=True)  # the cheapest refusal
    set_threads(threads)
    set_seed(seed)
    cfg = ReproduceConfig.quick() if quick else ReproduceConfig()
    cfg = replace(cfg, seed=seed, transfer=replace(cfg.transfer, seed=seed))
    if splits is not None:
        cfg = replace(cfg, splits=splits)
    started = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - started:6.1f}s] {msg}", err=True)

    if zoo_dir is not None and zoo_dir.exists():  # refused here, before --out is touched
        from paramsim.use.models import is_zoo

        if not zoo_dir.is_dir() or (any(zoo_dir.iterdir()) and not is_zoo(zoo_dir)):
            raise ParamsimError(f"--zoo {zoo_dir} is not a zoo directory (no registry.sqlite)")
    with replace_in_place(out_dir, REPORT_OUTPUT, overwrite) as out:
        atomic_write(out / REPORT_MARKER, json.dumps(cfg.to_dict(), indent=1, default=str) + "\n")
        reproduce(out, zoo_dir, cfg, say)
    click.echo(f"report: {out_dir / 'README.md'} ({time.perf_counter() - started:.1f} s)")


def register(cli: click.Group) -> None:
    cli.add_command(relate_command)
    cli.add_command(transfer_command)
    cli.add_command(reproduce_command)
