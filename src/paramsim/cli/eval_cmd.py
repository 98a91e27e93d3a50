"""`paramsim eval`: score similarity methods on a zoo under the task-split protocol."""

from __future__ import annotations

import time
from pathlib import Path

import click

from paramsim.atomic import atomic_dir, check_output_dir
from paramsim.cli.common import (
    EVAL_OUTPUT,
    compute_options,
    extra_zoo_option,
    methods_option,
    overwrite_option,
    set_seed,
    set_threads,
)
from paramsim.errors import ParamsimError

MAX_SPLITS = 1000  # a typo must not start a run of days


@click.command("eval")
@click.argument("zoo", type=click.Path(path_type=Path))
@methods_option(
    "Comma list of methods, e.g. flat,stats,gram1,chain,e2e,match,probes,cka,outputs,lps "
    "(default: all fixed methods).",
)
@click.option(
    "--splits",
    "n_splits",
    type=click.IntRange(1, MAX_SPLITS),
    default=5,
    show_default=True,
    help="Random task splits (mean ± std over them).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for results.json, results.md, cmc.png, relation.png.",
)
@overwrite_option
@click.option(
    "--holdout",
    type=click.Choice(["tasks", "classes"]),
    default="tasks",
    show_default=True,
    help="What a split holds out: tasks (new tasks of known classes) or classes (every task "
    "touching --classes held-out classes; learned methods never see those classes).",
)
@click.option(
    "--classes",
    "n_classes_out",
    type=click.IntRange(1),
    default=None,
    help="Held-out classes per split with --holdout classes (default: a fifth, 2 of 10).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Fraction of tasks held out per split with --holdout tasks [default: 0.4].",
)
@click.option(
    "--queries",
    "n_queries",
    type=click.IntRange(1),
    default=None,
    help="Queries per held-out task (default: every held-out model queries all others).",
)
@click.option(
    "--seen-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.4,
    show_default=True,
    help="Fraction of each training task's models withheld for seen-task "
    "classification (0: none; learned methods then train on all).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop on the first method that fails instead of recording it as skipped.",
)
@click.option(
    "--fixed-per-split",
    is_flag=True,
    help="Recompute fixed methods per split on the held-out and training models instead of "
    "once over the whole zoo (matters for methods that normalise over the set, e.g. stats).",
)
@extra_zoo_option
@compute_options("Seed of the splits and of every learned method.")
def eval_command(
    zoo: Path,
    methods: str | None,
    n_splits: int,
    seed: int,
    out_dir: Path,
    overwrite: bool,
    holdout: str,
    n_classes_out: int | None,
    test_fraction: float | None,
    n_queries: int | None,
    seen_fraction: float,
    strict: bool,
    fixed_per_split: bool,
    extra_zoo: tuple[str, ...],
    threads: int | None,
    quiet: bool,
) -> None:
    """Evaluate similarity methods on the models of ZOO (a directory from `paramsim zoo build`)."""
    from paramsim.eval.on_zoo import evaluate_zoo, extra_from_zoo
    from paramsim.eval.report import format_table, write_report
    from paramsim.methods import make_methods, parse_method_names
    from paramsim.zoo import open_zoo

    check_output_dir(out_dir, EVAL_OUTPUT, overwrite)  # first: the cheapest refusal
    if holdout == "tasks" and n_classes_out is not None:
        raise ParamsimError("--classes goes with --holdout classes; add it or drop --classes")
    if holdout == "classes" and test_fraction is not None:
        raise ParamsimError(
            "--test-fraction goes with --holdout tasks; with --holdout classes use --classes"
        )
    split_options = {"n_queries": n_queries, "seen_fraction": seen_fraction}
    if holdout == "tasks":
        split_options["test_fraction"] = 0.4 if test_fraction is None else test_fraction
    else:
        split_options["n_classes_out"] = n_classes_out
    names = parse_method_names(methods)
    store = open_zoo(zoo)
    made, unavailable = make_methods(names)
    if unavailable and strict:
        raise ParamsimError(next(iter(unavailable.values())))
    if extra_zoo and not any(m.learned for m in made.values()):
        missing = f" ({', '.join(unavailable)} cannot run here)" if unavailable else ""
        raise ParamsimError(
            f"--extra-zoo trains learned methods, and none of the methods that run is "
            f"learned{missing}; add lps or drop --extra-zoo"
        )
    for e in extra_zoo:
        if Path(e).resolve() == Path(zoo).resolve():
            raise ParamsimError(f"--extra-zoo {e} is ZOO itself; give another zoo")
    extra = extra_from_zoo(extra_zoo) if extra_zoo else None
    set_threads(threads)
    set_seed(seed)

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(names) * n_splits, unit="split", desc="eval")

    def progress(name: str, split: int) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{name} split {split}")
            bar.update(1)

    started = time.perf_counter()
    with atomic_dir(out_dir, EVAL_OUTPUT, overwrite) as tmp:
        try:
            results = evaluate_zoo(
                store,
                made,
                n_splits=n_splits,
                seed=seed,
                skipped=unavailable,
                order=names,
                progress=progress,
                split_options=split_options,
                holdout=holdout,
                strict=strict,
                extra=extra,
                fixed_mode="heldout" if fixed_per_split else "all",
            )
        finally:
            if bar is not None:
                bar.close()
        results["zoo"] = zoo.resolve().name
        results["extra_zoo"] = [str(Path(e).resolve()) for e in extra_zoo]
        results["wall_seconds"] = time.perf_counter() - started
        written = write_report(results, tmp)
    click.echo(format_table(results))
    for name, reason in results["skipped"].items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(
        f"{len(names)} methods x {n_splits} splits in {results['wall_seconds']:.1f} s; "
        f"wrote {', '.join(sorted(written))} to {out_dir}"
    )


def register(cli: click.Group) -> None:
    cli.add_command(eval_command)
