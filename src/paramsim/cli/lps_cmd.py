"""`paramsim fit | embed | index build | search`: train LPS on a zoo, embed models, and find
the stored models nearest to a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from paramsim.atomic import atomic_dir, atomic_path, check_output_dir, check_output_file
from paramsim.cli.common import (
    FIT_OUTPUT,
    INDEX_OUTPUT,
    compute_options,
    extra_zoo_option,
    overwrite_option,
    set_seed,
    set_threads,
)
from paramsim.devices import resolve_device
from paramsim.errors import ParamsimError

MAX_EPOCHS = 10_000
MAX_K = 100_000
NPY_MAGIC = b"\x93NUMPY"

_EXECUTOR_OPTIONS = (
    click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="ray: embed chunks on Ray workers (pip install '.[ray]'; docs/SCALING.md).",
    ),
    click.option(
        "--address", default=None, help="Ray cluster: auto or HOST:PORT (default: local)."
    ),
    click.option(
        "--chunk-size",
        type=click.IntRange(1, 1_000_000),
        default=1024,
        show_default=True,
        help="Models per chunk (one part file each; a rerun reuses finished parts).",
    ),
)


def device_option(f):
    """--device for the commands that run the LPS network (cpu unless asked)."""
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="Where the LPS network computes: cpu, cuda or cuda:N.",
    )(f)


def executor_options(f):
    """--executor, --address and --chunk-size, for the commands that embed many models."""
    for opt in reversed(_EXECUTOR_OPTIONS):
        f = opt(f)
    return f


def _load_model(path: str | Path):
    from paramsim.lps import LPS

    return LPS.load(path)


def register(cli: click.Group) -> None:
    @cli.command("fit")
    @click.argument("zoo", type=click.Path())
    @click.option("--out", required=True, type=click.Path(), help="Model directory to write.")
    @overwrite_option
    @extra_zoo_option
    @click.option(
        "--method",
        "method",
        default=None,
        help="The LPS method to train: lps (default) or an ablation such as lps-relation.",
    )
    @click.option("--variant", "variant", default=None, hidden=True)  # the old spelling
    @click.option(
        "--epochs",
        type=click.IntRange(1, MAX_EPOCHS),
        default=None,
        help="Most epochs (default 15; early stopping on validation tasks usually ends sooner).",
    )
    @click.option("--loss", type=click.Choice(["supcon", "multisim", "ce"]), default=None)
    @click.option(
        "--val-fraction",
        type=click.FloatRange(0, 0.99),
        default=0.2,
        show_default=True,
        help="Fraction of ZOO's tasks held out for early stopping.",
    )
    @device_option
    @compute_options("Seed of the initialisation, batches, augmentation and validation tasks.")
    def fit_cmd(
        zoo, out, overwrite, extra_zoo, method, variant, epochs, loss, val_fraction, device,
        seed, threads, quiet,
    ):  # fmt: skip
        """Train the LPS similarity network on the models of ZOO and save it to --out."""
        from tqdm import tqdm

        from paramsim.lps import LPS, VARIANTS, LPSConfig, variant_configs
        from paramsim.lps.material import zoo_material
        from paramsim.zoo import open_zoo

        if method is not None and variant is not None:
            raise ParamsimError("give --method once (--variant is its old spelling)")
        check_output_dir(out, FIT_OUTPUT, overwrite)  # first: the cheapest refusal
        resolve_device(device)
        method = method or variant or "lps"
        if method not in VARIANTS:
            raise ParamsimError(
                f"unknown LPS method {method!r} for fit; choose from {', '.join(VARIANTS)}"
            )
        set_threads(threads)
        set_seed(seed)
        z = open_zoo(zoo)
        extras = [open_zoo(e) for e in extra_zoo]
        for e in extra_zoo:
            if Path(e).resolve() == Path(zoo).resolve():
                raise ParamsimError(f"--extra-zoo {e} is ZOO itself; its models train already")
        cfg_kw, fit_config = variant_configs(
            method, seed=seed, val_fraction=val_fraction, epochs=epochs, loss=loss
        )
        with atomic_dir(out, FIT_OUTPUT, overwrite) as tmp:
            nets = z.networks()
            tasks = [r.task for r in z.records]
            extra_n: list = []
            extra_t: list = []
            for ez in extras:
                extra_n += ez.networks()
                extra_t += [r.task for r in ez.records]
            cfg = LPSConfig(
                input_shape=tuple(nets[0].input_shape), n_outputs=nets[0].n_outputs, **cfg_kw
            )
            # the method's own group-task zoo (built once), probe start images, input basis
            reads_weights = any(n.kind == "mlp" for n in nets)
            got = zoo_material(
                zoo,
                fit_config,
                tasks,
                cfg.learned_probes,
                not quiet,
                cfg if reads_weights else None,
            )
            extra_n += got.networks
            extra_t += got.tasks
            bar = tqdm(total=fit_config.epochs + 1, disable=quiet, desc="fit", unit="epoch")

            def progress(h: dict) -> None:
                # epoch 0 is the untrained network's validation score: no training loss yet
                shown = {k: "-" if math.isnan(h[k]) else f"{h[k]:.3f}" for k in ("loss", "val_map")}
                bar.set_postfix(shown, refresh=h["epoch"] == 0)  # else drawn by update
                bar.update(1)

            try:
                model = LPS(cfg, fit_config).fit(
                    nets,
                    tasks,
                    extra_networks=extra_n,
                    extra_tasks=extra_t,
                    progress=progress,
                    device=device,
                    probe_images=got.probe_images,
                    input_basis=got.input_basis,
                )
            finally:
                bar.close()
            model.meta["zoo"] = str(Path(zoo).resolve())
            model.meta["method"] = method
            model.save(tmp)
        m = model.meta
        val = (
            f"val mAP {m['best_val_map']:.4f} on {len(m['val_tasks'])} tasks"
            if m["val_tasks"]
            else "no validation tasks (the last epoch kept)"
        )
        click.echo(
            f"saved {out}: {m['n_train_models']} training models ({m['n_extra_models']} extra, "
            f"{m['n_extra_dropped']} dropped), best epoch {m['best_epoch']}, {val}, "
            f"{m['fit_seconds']:.1f} s"
        )

    @cli.command("embed")
    @click.argument("models", nargs=-1, required=True)
    @click.option(
        "--model",
        "model_dir",
        required=True,
        type=click.Path(),
        help="Saved LPS model (from `paramsim fit`).",
    )
    @click.option("--out", required=True, type=click.Path(), help=".npy file to write.")
    @overwrite_option
    @executor_options
    @device_option
    @compute_options()
    def embed_cmd(
        models, model_dir, out, overwrite, executor, address, chunk_size, device, seed, threads,
        quiet,
    ):  # fmt: skip
        """Embed MODELS (zoo directories, ZOO:ID, checkpoint files, or directories searched
        for both) into one .npy array, one row per model in the order given (a directory's
        zoos and files in sorted path order)."""
        from paramsim.embed_bulk import embed_sources

        check_output_file(out, "a .npy array", NPY_MAGIC, overwrite)
        set_threads(threads)
        set_seed(seed)
        _, emb, _, parts = embed_sources(
            models,
            model_dir,
            out,
            executor=executor,
            address=address,
            chunk_size=chunk_size,
            threads=threads,
            progress=not quiet,
            device=device,
        )
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
        parts.clear()
        click.echo(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]}")

    @cli.group("index")
    def index_group() -> None:
        """Search indexes over model embeddings."""

    @index_group.command("build")
    @click.argument("sources", nargs=-1, required=True)
    @click.option("--model", "model_dir", required=True, type=click.Path())
    @click.option("--out", required=True, type=click.Path(), help="Index directory to write.")
    @overwrite_option
    @click.option(
        "--kind",
        type=click.Choice(["exact", "hnsw", "ivf"]),
        default="exact",
        show_default=True,
        help="exact: exhaustive scan; hnsw or ivf: approximate, under 1 ms a query at 1M "
        "models (docs/SCALING.md).",
    )
    @click.option(
        "--fp16",
        is_flag=True,
        help="Store vectors as fp16: still exhaustive, half the memory, ~2x faster at 1M models.",
    )
    @click.option(
        "--nlist",
        type=click.IntRange(1, 2**31 - 1),
        default=None,
        help="ivf: the number of cells (default about 4 sqrt(models); at most one per 39 "
        "models). More cells than tasks make `search --exact` read less.",
    )
    @executor_options
    @device_option
    @compute_options()
    def index_build(
        sources,
        model_dir,
        out,
        overwrite,
        kind,
        fp16,
        nlist,
        executor,
        address,
        chunk_size,
        device,
        seed,
        threads,
        quiet,
    ):
        """Embed every model of SOURCES (zoos, ZOO:ID, checkpoint files, directories of them)
        with the LPS model and store a cosine index with each model's task, architecture and
        accuracy (for `search --task/--arch/--min-acc`)."""
        from paramsim.embed_bulk import embed_sources
        from paramsim.index import build_index, model_checksum

        check_output_dir(out, INDEX_OUTPUT, overwrite)  # first: the cheapest refusal
        if nlist is not None and kind != "ivf":
            raise ParamsimError("--nlist sets an ivf index's cells; drop it or use --kind ivf")
        if fp16 and kind != "exact":
            raise ParamsimError("--fp16 is for --kind exact only; drop --fp16 or --kind")
        set_threads(threads)
        set_seed(seed)
        items, emb, archs, parts = embed_sources(
            sources,
            model_dir,
            out,
            executor=executor,
            address=address,
            chunk_size=chunk_size,
            threads=threads,
            progress=not quiet,
            unique=True,
            device=device,
        )
        meta = {
            "sources": [str(Path(s).resolve()) for s in sources],
            "zoo": str(Path(sources[0]).resolve()),
            "model": str(Path(model_dir).resolve()),
            "model_sha256": model_checksum(model_dir),
        }
        if kind != "exact" and not quiet:  # k-means or graph building: minutes at 1M models
            click.echo(f"building the {kind} index over {len(items)} models...", err=True)
        with atomic_dir(out, INDEX_OUTPUT, overwrite) as tmp:
            idx = build_index(
                items,
                emb,
                archs,
                kind=kind,
                storage="fp16" if fp16 else "flat",
                meta=meta,
                params=None if nlist is None else {"nlist": nlist},
            )
            idx.save(tmp)
        parts.clear()
        click.echo(f"indexed {len(idx)} models of {', '.join(sources)} in {out} ({kind})")
        if nlist is not None and idx.params["nlist"] < nlist:
            click.echo(
                f"note: --nlist {nlist} lowered to {idx.params['nlist']} cells, one per 39 "
                "models at most",
                err=True,
            )

    @cli.command("search")
    @click.argument("query")
    @click.option("--index", "index_dir", required=True, type=click.Path())
    @click.option(
        "--model",
        "model_dir",
        default=None,
        type=click.Path(),
        help="LPS model (default: the one the index was built with).",
    )
    @click.option("-k", type=click.IntRange(1, MAX_K), default=10, show_default=True)
    @click.option("--task", "tasks", multiple=True, help="Only models of this task (repeatable).")
    @click.option(
        "--arch",
        "archs",
        multiple=True,
        help="Only this architecture: a label like 'mlp 64-32-32-2' or a kind, mlp or cnn "
        "(repeatable).",
    )
    @click.option(
        "--min-acc",
        type=click.FloatRange(0, 1),
        default=None,
        help="Only models whose test accuracy is at least this.",
    )
    @click.option(
        "--exact",
        is_flag=True,
        help="ivf index: the exhaustive scan's answer, reading only the cells that could hold "
        "one of the top k (an exact index is exact already).",
    )
    @click.option(
        "--nprobe",
        type=click.IntRange(1, None),
        default=None,
        help="ivf index: cells scanned per query (default: the index's, 16). A query far from "
        "every stored model, such as a new task's probe, needs more (docs/SCALING.md).",
    )
    @click.option(
        "--ef",
        type=click.IntRange(1, None),
        default=None,
        help="hnsw index: candidates kept while walking the graph (default: the index's, 64).",
    )
    @compute_options()
    def search_cmd(
        query,
        index_dir,
        model_dir,
        k,
        tasks,
        archs,
        min_acc,
        exact,
        nprobe,
        ef,
        seed,
        threads,
        quiet,
    ):
        """The stored models nearest to QUERY: a checkpoint file, ZOO:ID, or a whole zoo (a
        table per model of it)."""
        from paramsim.index import EmbeddingIndex
        from paramsim.use.models import resolve_models

        set_threads(threads)
        set_seed(seed)
        idx = EmbeddingIndex.load(index_dir)
        if exact and idx.kind == "hnsw":
            raise ParamsimError(
                f"{index_dir} is an hnsw index, which cannot search exactly; drop --exact, or "
                "rebuild it with --kind ivf or --kind exact"
            )
        for flag, value, kind in (("--nprobe", nprobe, "ivf"), ("--ef", ef, "hnsw")):
            if value is not None and idx.kind != kind:
                raise ParamsimError(
                    f"{flag} is for an {kind} index; {index_dir} is {idx.kind}: drop {flag}"
                )
        model_dir = model_dir or idx.meta.get("model")
        if not model_dir:
            raise ParamsimError(f"{index_dir} does not name its LPS model; give --model DIR")
        idx.check_model(model_dir)
        keep = idx.select(tasks, archs, min_acc)
        if keep is not None and not len(keep):
            raise ParamsimError("no stored model passes --task/--arch/--min-acc together")
        lps = _load_model(model_dir)
        models = resolve_models([query])
        scores, ids = idx.search(
            lps.embed(models.networks),
            k,
            tasks=tasks,
            archs=archs,
            min_acc=min_acc,
            exact=exact,
            nprobe=nprobe,
            ef_search=ef,
        )
        if exact and (idx.exact_read_share or 0) > 0.5 and not quiet:
            click.echo(
                f"note: --exact read {idx.exact_read_share:.0%} of the stored vectors: the "
                "query has no near neighbour, or the index too few cells (index build "
                "--nlist, docs/SCALING.md)",
                err=True,
            )
        refs = idx.n_sources > 1  # name where each hit came from when it is not one zoo
        for q, (label, task) in enumerate(zip(models.labels, models.tasks, strict=True)):
            if q:
                click.echo("")
            click.echo(f"query {label}" + (f" (task {task})" if task else ""))
            click.echo(
                f"{'rank':>4}  {'id':>7}  {'score':>7}  task" + ("  (model)" if refs else "")
            )
            for r, (s, i) in enumerate(zip(scores[q], ids[q], strict=True), 1):
                if i < 0:
                    break
                line = f"{r:>4}  {i:>7}  {s:>7.4f}  {idx.task_of(int(i))}"
                click.echo(line + (f"  ({idx.ref_of(int(i))})" if refs else ""))
