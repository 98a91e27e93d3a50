"""`paramsim eval`: score similarity methods on a zoo under the task-split protocol."""

from __future__ import annotations

import time
from pathlib import Path

import click

from paramsim.cli.common import quiet_option, set_threads, threads_option
from paramsim.errors import ParamsimError


@click.command("eval")
@click.argument("zoo", type=click.Path(path_type=Path))
@click.option(
    "--methods",
    default=None,
    help="Comma list of methods, e.g. flat,stats,gram1,chain,e2e,match,probes,cka,outputs,lps "
    "(default: all fixed methods).",
)
@click.option(
    "--splits",
    "n_splits",
    type=int,
    default=5,
    show_default=True,
    help="Random task splits (mean ± std over them).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for results.json, results.md, cmc.png, relation.png.",
)
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
    type=int,
    default=None,
    help="Held-out classes per split with --holdout classes (default: a fifth, 2 of 10).",
)
@click.option(
    "--test-fraction",
    type=float,
    default=None,
    help="Fraction of tasks held out per split with --holdout tasks [default: 0.4].",
)
@click.option(
    "--queries",
    "n_queries",
    type=int,
    default=None,
    help="Queries per held-out task (default: every held-out model queries all others).",
)
@click.option(
    "--seen-fraction",
    type=float,
    default=0.4,
    show_default=True,
    help="Fraction of each training task's models withheld for seen-task "
    "classification (0: none; learned methods then train on all).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop when a method cannot run here (a missing optional package, models it does "
    "not handle) instead of recording it as skipped. Errors inside a method always stop.",
)
@click.option(
    "--fixed-per-split",
    is_flag=True,
    help="Recompute fixed methods per split on the held-out and training models instead of "
    "once over the whole zoo (matters for methods that normalise over the set, e.g. stats).",
)
@click.option(
    "--extra-zoo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Extra training models for the learned methods (e.g. a digits-groups zoo); per split, "
    "models of held-out or validation tasks, of held-out classes, and copies of ZOO's "
    "withheld models are dropped.",
)
@threads_option
@quiet_option
def eval_command(
    zoo: Path,
    methods: str | None,
    n_splits: int,
    seed: int,
    out_dir: Path,
    holdout: str,
    n_classes_out: int | None,
    test_fraction: float | None,
    n_queries: int | None,
    seen_fraction: float,
    strict: bool,
    fixed_per_split: bool,
    extra_zoo: Path | None,
    threads: int | None,
    quiet: bool,
) -> None:
    """Evaluate similarity methods on the models of ZOO (a directory from `paramsim zoo build`)."""
    from paramsim.eval.on_zoo import evaluate_zoo, extra_from_zoo
    from paramsim.eval.report import format_table, write_report
    from paramsim.methods import make_methods, parse_method_names
    from paramsim.zoo import open_zoo

    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    if threads is not None and threads < 1:
        raise ParamsimError(f"--threads must be at least 1, got {threads}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamsimError(f"--out {out_dir} is a file; give a directory for the report")
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
    extra = extra_from_zoo(extra_zoo) if extra_zoo else None
    made, unavailable = make_methods(names)
    if unavailable and strict:
        raise ParamsimError(next(iter(unavailable.values())))
    set_threads(threads)

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(names) * n_splits, unit="split", desc="eval")

    def progress(name: str, split: int) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{name} split {split}")
            bar.update(1)

    started = time.perf_counter()
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
    results["extra_zoo"] = str(extra_zoo) if extra_zoo else None
    results["wall_seconds"] = time.perf_counter() - started
    written = write_report(results, out_dir)
    click.echo(format_table(results))
    for name, reason in results["skipped"].items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(
        f"{len(names)} methods x {n_splits} splits in {results['wall_seconds']:.1f} s; "
        f"wrote {', '.join(sorted(written))} to {out_dir}"
    )


def register(cli: click.Group) -> None:
    cli.add_command(eval_command)
