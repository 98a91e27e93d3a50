"""`paramsim fit | embed | index build | search`: train LPS on a zoo, embed models, and find
the stored models nearest to a checkpoint."""

from __future__ import annotations

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
from paramsim.errors import ParamsimError

MAX_EPOCHS = 10_000
MAX_K = 100_000
NPY_MAGIC = b"\x93NUMPY"


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
        help="Most epochs (default 30).",
    )
    @click.option("--loss", type=click.Choice(["supcon", "multisim", "ce"]), default=None)
    @click.option(
        "--val-fraction",
        type=click.FloatRange(0, 0.99),
        default=0.2,
        show_default=True,
        help="Fraction of ZOO's tasks held out for early stopping.",
    )
    @compute_options("Seed of the initialisation, batches, augmentation and validation tasks.")
    def fit_cmd(
        zoo, out, overwrite, extra_zoo, method, variant, epochs, loss, val_fraction, seed,
        threads, quiet,
    ):  # fmt: skip
        """Train the LPS similarity network on the models of ZOO and save it to --out."""
        from tqdm import tqdm

        from paramsim.lps import LPS, VARIANTS, LPSConfig, variant_configs
        from paramsim.zoo import open_zoo

        if method is not None and variant is not None:
            raise ParamsimError("give --method once (--variant is its old spelling)")
        check_output_dir(out, FIT_OUTPUT, overwrite)  # first: the cheapest refusal
        method = method or variant or "lps"
        if method not in VARIANTS:
            raise ParamsimError(
                f"unknown LPS method {method!r} for fit; choose from {', '.join(VARIANTS)}"
            )
        set_threads(threads)
        set_seed(seed)
        z = open_zoo(zoo)
        extras = [open_zoo(e) for e in extra_zoo]
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
            bar = tqdm(total=fit_config.epochs + 1, disable=quiet, desc="fit", unit="epoch")

            def progress(h: dict) -> None:
                bar.set_postfix(
                    loss=f"{h['loss']:.3f}", val_map=f"{h['val_map']:.3f}", refresh=False
                )
                bar.update(1)

            try:
                model = LPS(cfg, fit_config).fit(
                    nets, tasks, extra_networks=extra_n, extra_tasks=extra_t, progress=progress
                )
            finally:
                bar.close()
            model.meta["zoo"] = str(Path(zoo).resolve())
            model.meta["method"] = method
            model.save(tmp)
        m = model.meta
        click.echo(
            f"saved {out}: {m['n_train_models']} training models ({m['n_extra_models']} extra, "
            f"{m['n_extra_dropped']} dropped), best epoch {m['best_epoch']}, "
            f"val mAP {m['best_val_map']:.4f} on {len(m['val_tasks'])} tasks, "
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
    @compute_options()
    def embed_cmd(models, model_dir, out, overwrite, seed, threads, quiet):
        """Embed MODELS (zoo directories, ZOO:ID, or checkpoint files) into one .npy array."""
        from paramsim.use.models import resolve_models

        check_output_file(out, "a .npy array", NPY_MAGIC, overwrite)
        set_threads(threads)
        set_seed(seed)
        lps = _load_model(model_dir)
        emb = lps.embed(resolve_models(models).networks)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
        click.echo(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]}")

    @cli.group("index")
    def index_group() -> None:
        """Search indexes over model embeddings."""

    @index_group.command("build")
    @click.argument("zoo", type=click.Path())
    @click.option("--model", "model_dir", required=True, type=click.Path())
    @click.option("--out", required=True, type=click.Path(), help="Index directory to write.")
    @overwrite_option
    @click.option(
        "--fp16",
        is_flag=True,
        help="Store vectors as fp16: still exhaustive, half the memory, ~2x faster at 1M models.",
    )
    @compute_options()
    def index_build(zoo, model_dir, out, overwrite, fp16, seed, threads, quiet):
        """Embed every model of ZOO with the LPS model and store a cosine index."""
        from paramsim.index import EmbeddingIndex, model_checksum
        from paramsim.use.models import resolve_models
        from paramsim.zoo import open_zoo

        check_output_dir(out, INDEX_OUTPUT, overwrite)  # first: the cheapest refusal
        set_threads(threads)
        set_seed(seed)
        open_zoo(zoo)  # a zoo directory, not a checkpoint file
        lps = _load_model(model_dir)
        with atomic_dir(out, INDEX_OUTPUT, overwrite) as tmp:
            models = resolve_models([zoo])
            emb = lps.embed(models.networks)
            idx = EmbeddingIndex(
                emb.shape[1],
                {
                    "zoo": str(Path(zoo).resolve()),
                    "model": str(Path(model_dir).resolve()),
                    "model_sha256": model_checksum(model_dir),
                },
                storage="fp16" if fp16 else "flat",
            )
            idx.add(emb, models.ids, models.tasks)
            idx.save(tmp)
        click.echo(f"indexed {len(idx)} models of {zoo} in {out}")

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
    @compute_options()
    def search_cmd(query, index_dir, model_dir, k, seed, threads, quiet):
        """The stored models nearest to QUERY: a checkpoint file, ZOO:ID, or a whole zoo (a
        table per model of it)."""
        from paramsim.index import EmbeddingIndex
        from paramsim.use.models import resolve_models

        set_threads(threads)
        set_seed(seed)
        idx = EmbeddingIndex.load(index_dir)
        model_dir = model_dir or idx.meta.get("model")
        if not model_dir:
            raise ParamsimError(f"{index_dir} does not name its LPS model; give --model DIR")
        idx.check_model(model_dir)
        lps = _load_model(model_dir)
        models = resolve_models([query])
        scores, ids = idx.search(lps.embed(models.networks), k)
        for q, (label, task) in enumerate(zip(models.labels, models.tasks, strict=True)):
            if q:
                click.echo("")
            click.echo(f"query {label}" + (f" (task {task})" if task else ""))
            click.echo(f"{'rank':>4}  {'id':>7}  {'score':>7}  task")
            for r, (s, i) in enumerate(zip(scores[q], ids[q], strict=True), 1):
                if i < 0:
                    break
                click.echo(f"{r:>4}  {i:>7}  {s:>7.4f}  {idx.task_of(int(i))}")
