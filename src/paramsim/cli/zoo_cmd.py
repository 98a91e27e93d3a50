"""`paramsim zoo build | info | export`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from paramsim.atomic import atomic_path, check_output_file
from paramsim.cli.common import compute_options, overwrite_option, set_threads
from paramsim.cli.printable import printable
from paramsim.errors import ParamsimError


@click.group()
def zoo() -> None:
    """Build and inspect model sets (zoos of small trained networks)."""


@zoo.command()
@click.argument("recipe")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Zoo directory: new, empty, or a zoo to resume or repair.",
)
@click.option(
    "--models-per-task",
    type=click.IntRange(min=1),
    default=None,
    help="Override the recipe's count.",
)
@click.option("--tasks", default=None, help="all | disjoint | groups:N | pairs like 0-1,2-3.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-dir", type=click.Path(), default=None, help="For IDX and CIFAR recipes.")
@click.option(
    "--shard-size", type=click.IntRange(min=1), default=None, help="Models trained together."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: one Ray task per shard (pip install '.[ray]'; docs/SCALING.md).",
)
@click.option("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: local).")
@click.option(
    "--precision",
    type=click.Choice(["float32", "bf16"]),
    default="float32",
    show_default=True,
    help="bf16: autocast with float32 weights (for GPUs; recorded in the zoo).",
)
@click.option(
    "--channels-last",
    is_flag=True,
    help="CNN convolutions in NHWC memory layout (faster on CUDA tensor cores).",
)
@compute_options("Zoo seed: every model's draws and the validation rows.")
def build(
    recipe,
    out,
    models_per_task,
    tasks,
    device,
    data_dir,
    shard_size,
    executor,
    address,
    precision,
    channels_last,
    seed,
    threads,
    quiet,
):
    """Train the models of RECIPE (a name or a .toml file) into OUT.

    A rerun into the same OUT resumes: shards whose checksum fails are trained again.
    """
    from paramsim.devices import parse_device, resolve_device
    from paramsim.executors import make_executor
    from paramsim.zoo import build_zoo, load_recipe, open_zoo
    from paramsim.zoo.build import check_out

    set_threads(threads)
    # Ray's nodes check CUDA themselves; the name is checked here either way
    (resolve_device if executor == "local" else parse_device)(device)
    rec = load_recipe(recipe).with_overrides(
        models_per_task=models_per_task, tasks=tasks, shard_size=shard_size
    )
    if rec.dataset == "digits" and data_dir is not None:  # it would be recorded, never read
        raise ParamsimError(
            "the digits data set ships with scikit-learn and reads no files; drop --data-dir "
            "(it is for the idx, fashion-mnist and cifar recipes)"
        )
    check_out(Path(out))  # before Ray starts: the cheapest refusal first
    start = time.perf_counter()
    with make_executor(executor, address, device=device, threads=threads) as ex:
        build_zoo(
            rec,
            out,
            seed=seed,
            device=device,
            data_dir=data_dir,
            progress=not quiet,
            executor=ex,
            precision=precision,
            channels_last=channels_last,
        )
    s = open_zoo(out).summary()
    if not quiet:
        acc, val = s["test_acc"], s["val_acc"]
        selected = f"validation accuracy min {val['min']:.3f}; " if val else ""
        click.echo(
            f"{out}: {s['models']} models over {s['tasks']} tasks in "
            f"{time.perf_counter() - start:.1f} s; {selected}test accuracy min {acc['min']:.3f}, "
            f"median {acc['median']:.3f}; {s['retrained_models']} retrained"
        )


@zoo.command()
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also check every shard's checksum.")
def info(directory, as_json, verify):
    """Summarise a zoo: tasks, models, architectures, accuracy spread."""
    from paramsim.zoo import open_zoo

    z = open_zoo(directory)
    s = z.summary()
    if verify:
        s["damaged_shards"] = z.verify()
    if as_json:
        click.echo(json.dumps(s, indent=2))  # json escapes control characters itself
    else:
        p = printable
        click.echo(
            f"zoo {p(s['path'])}: recipe {p(s['recipe'])}, dataset {p(s['dataset'])}, "
            f"seed {p(s['seed'])}, precision {p(s['precision'])}"
        )
        click.echo(f"  {s['models']} models over {s['tasks']} tasks (complete: {s['complete']})")
        for label, n in s["architectures"].items():
            click.echo(f"  {n} x {p(label)}")
        for split in ("train_acc", "val_acc", "test_acc"):
            a = s[split]
            if a:
                click.echo(
                    f"  {split}: min {a['min']:.3f}  p5 {a['p5']:.3f}  median {a['median']:.3f}"
                    f"  mean {a['mean']:.3f}  max {a['max']:.3f}"
                )
        click.echo(f"  retrained with fresh draws: {s['retrained_models']}")
        if verify and not s["damaged_shards"]:
            click.echo("  every shard matches its checksum")
    if verify and s["damaged_shards"]:
        raise ParamsimError(
            f"damaged shards: {', '.join(map(printable, s['damaged_shards']))}; rerun "
            "`paramsim zoo build` with the same recipe into the same --out to redo them"
        )


@zoo.command()
@click.argument("directory", type=click.Path())
@click.argument("model_id", type=int)
@click.option("--out", required=True, type=click.Path(), help=".safetensors or .pt")
@overwrite_option
def export(directory, model_id, out, overwrite):
    """Write one model as a plain PyTorch state_dict (and its spec as OUT.json)."""
    from paramsim.zoo import open_zoo

    path = Path(out)
    suffix = path.suffix.lower()  # as `compare` reads them: A.SAFETENSORS is safetensors
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ParamsimError(f"cannot tell the format of {out}; end it in .safetensors or .pt")
    spec_path = path.with_name(path.name + ".json")
    # an existing file is replaced only with --overwrite, and only when it looks like what
    # export writes: a user's other file of that name is never lost
    looks_right = _looks_like_safetensors if suffix == ".safetensors" else _looks_like_zip
    # export writes the two together: one without the other is someone else's file
    there = [q for q in (path, spec_path) if q.exists() or q.is_symlink()]
    if len(there) == 1:
        missing = spec_path if there[0] == path else path
        raise ParamsimError(
            f"--out: {there[0]} exists without {missing.name}, so it is not an earlier export "
            "(which writes both); choose another file name"
        )
    check_output_file(path, f"a {suffix} checkpoint", looks_right, overwrite)
    check_output_file(spec_path, "a model spec", b"{", overwrite)
    z = open_zoo(directory)
    rec = z.record(model_id)
    sd = z.state_dict(model_id)
    spec = {
        "arch": json.loads(rec.arch.to_json()),
        "task": rec.task.name,
        "output_classes": rec.task.sides,
        "val_acc": rec.val_acc,
        "test_acc": rec.test_acc,
    }
    try:
        # Both files are written in full before either is renamed into place; a failure
        # anywhere leaves neither new file behind (and any old ones as they were).
        with atomic_path(path) as tmp, atomic_path(spec_path) as spec_tmp:
            if suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(sd, tmp, metadata={"arch": rec.arch.to_json(), "task": rec.task.name})
            else:
                torch.save(sd, tmp)
            spec_tmp.write_text(json.dumps(spec, indent=2))
    except OSError as exc:
        raise ParamsimError(f"cannot write {path} and {spec_path.name}: {exc}") from exc
    click.echo(f"wrote {path} (task {rec.task.name}, {rec.arch.label}) and {spec_path}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(zoo)


def _looks_like_zip(head: bytes) -> bool:
    """What torch.save writes (.pt, .pth): a zip archive."""
    return head.startswith(b"PK\x03\x04")


def _looks_like_safetensors(head: bytes) -> bool:
    """A little-endian 8-byte header length, then the JSON header."""
    return len(head) > 8 and head[8:9] == b"{"
