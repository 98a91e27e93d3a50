"""`paramsim fit | embed | index build | search`: train LPS on a zoo, embed models, and find
the stored models nearest to a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from paramsim.atomic import atomic_path
from paramsim.cli.common import quiet_option, set_threads, threads_option
from paramsim.errors import ParamsimError


def _is_zoo(path: Path) -> bool:
    return path.is_dir() and (path / "registry.sqlite").is_file()


def _open_zoo(path: str | Path):
    from paramsim.zoo import open_zoo

    return open_zoo(path)


def resolve_models(items: tuple[str, ...] | list[str]) -> tuple[list, list[int], list[str]]:
    """Networks, ids and task names from zoo directories, `ZOO:ID` references and checkpoint
    files (ids of files count up from 0 in argument order; their task is unknown)."""
    from paramsim.weights import load

    nets: list = []
    ids: list[int] = []
    names: list[str] = []
    for item in items:
        path = Path(item)
        head, _, tail = item.rpartition(":")
        if _is_zoo(path):
            zoo = _open_zoo(path)
            nets += zoo.networks()
            ids += [r.id for r in zoo.records]
            names += [r.task.name for r in zoo.records]
        elif head and tail.isdigit() and _is_zoo(Path(head)):
            zoo = _open_zoo(head)
            mid = int(tail)
            if not 0 <= mid < len(zoo):
                raise ParamsimError(f"{head} has models 0..{len(zoo) - 1}; {mid} is not one")
            nets.append(zoo.network(mid))
            ids.append(mid)
            names.append(zoo.record(mid).task.name)
        elif path.is_file():
            nets.append(load(path))
            ids.append(len(ids))
            names.append("")
        else:
            raise ParamsimError(f"{item} is neither a zoo directory, ZOO:ID, nor a checkpoint file")
    if not nets:
        raise ParamsimError("no models given")
    return nets, ids, names


def _load_model(path: str | Path):
    from paramsim.lps import LPS

    return LPS.load(path)


def _atomic_npy(array: np.ndarray, out: Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def register(cli: click.Group) -> None:
    @cli.command("fit")
    @click.argument("zoo", type=click.Path(file_okay=False))
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Model dir.")
    @click.option(
        "--extra-zoo",
        multiple=True,
        type=click.Path(file_okay=False),
        help="More training models (e.g. digits-groups); tasks that could be held out "
        "(e.g. pairs absent from ZOO's training tasks) are dropped.",
    )
    @click.option("--variant", default="lps", show_default=True, help="lps or an ablation.")
    @click.option("--epochs", type=int, default=None, help="Most epochs (default 30).")
    @click.option("--loss", type=click.Choice(["supcon", "multisim", "ce"]), default=None)
    @click.option(
        "--val-fraction",
        type=float,
        default=0.2,
        show_default=True,
        help="Fraction of ZOO's tasks held out for early stopping.",
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @threads_option
    @quiet_option
    def fit_cmd(zoo, out, extra_zoo, variant, epochs, loss, val_fraction, seed, threads, quiet):
        """Train the LPS similarity network on the models of ZOO and save it to --out."""
        from tqdm import tqdm

        from paramsim.lps import LPS, LPSConfig, variant_configs

        set_threads(threads)
        cfg_kw, fit_config = variant_configs(
            variant, seed=seed, val_fraction=val_fraction, epochs=epochs, loss=loss
        )
        if not 0 <= val_fraction < 1:
            raise ParamsimError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        z = _open_zoo(zoo)
        nets = z.networks()
        tasks = [r.task for r in z.records]
        extra_n: list = []
        extra_t: list = []
        for e in extra_zoo:
            ez = _open_zoo(e)
            extra_n += ez.networks()
            extra_t += [r.task for r in ez.records]
        cfg = LPSConfig(
            input_shape=tuple(nets[0].input_shape), n_outputs=nets[0].n_outputs, **cfg_kw
        )
        bar = tqdm(total=fit_config.epochs + 1, disable=quiet, desc="fit", unit="epoch")

        def progress(h: dict) -> None:
            bar.set_postfix(loss=f"{h['loss']:.3f}", val_map=f"{h['val_map']:.3f}", refresh=False)
            bar.update(1)

        model = LPS(cfg, fit_config).fit(
            nets, tasks, extra_networks=extra_n, extra_tasks=extra_t, progress=progress
        )
        bar.close()
        model.meta["zoo"] = str(Path(zoo).resolve())
        model.save(out)
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
        type=click.Path(file_okay=False),
        help="Saved LPS model (from `paramsim fit`).",
    )
    @click.option("--out", required=True, type=click.Path(dir_okay=False), help=".npy file.")
    @threads_option
    def embed_cmd(models, model_dir, out, threads):
        """Embed MODELS (zoo directories, ZOO:ID, or checkpoint files) into one .npy array."""
        set_threads(threads)
        lps = _load_model(model_dir)
        nets, _, _ = resolve_models(models)
        emb = lps.embed(nets)
        _atomic_npy(emb, Path(out))
        click.echo(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]}")

    @cli.group("index")
    def index_group() -> None:
        """Search indexes over model embeddings."""

    @index_group.command("build")
    @click.argument("zoo", type=click.Path(file_okay=False))
    @click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Index dir.")
    @click.option(
        "--fp16",
        is_flag=True,
        help="Store vectors as fp16: still exhaustive, half the memory, ~2x faster at 1M models.",
    )
    @threads_option
    def index_build(zoo, model_dir, out, fp16, threads):
        """Embed every model of ZOO with the LPS model and store a cosine index."""
        from paramsim.index import EmbeddingIndex

        set_threads(threads)
        lps = _load_model(model_dir)
        nets, ids, names = resolve_models([zoo])
        emb = lps.embed(nets)
        idx = EmbeddingIndex(
            emb.shape[1],
            {"zoo": str(Path(zoo).resolve()), "model": str(Path(model_dir).resolve())},
            storage="fp16" if fp16 else "flat",
        )
        idx.add(emb, ids, names)
        idx.save(out)
        click.echo(f"indexed {len(idx)} models of {zoo} in {out}")

    @cli.command("search")
    @click.argument("query")
    @click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False))
    @click.option(
        "--model",
        "model_dir",
        default=None,
        type=click.Path(file_okay=False),
        help="LPS model (default: the one the index was built with).",
    )
    @click.option("-k", type=int, default=10, show_default=True)
    @threads_option
    def search_cmd(query, index_dir, model_dir, k, threads):
        """The stored models nearest to QUERY (a checkpoint file or ZOO:ID)."""
        from paramsim.index import EmbeddingIndex

        set_threads(threads)
        if k < 1:
            raise ParamsimError(f"-k must be at least 1, got {k}")
        idx = EmbeddingIndex.load(index_dir)
        lps = _load_model(model_dir or idx.meta.get("model", ""))
        nets, _, names = resolve_models([query])
        scores, ids = idx.search(lps.embed(nets[:1]), k)
        if names[0]:
            click.echo(f"query {query} (task {names[0]})")
        click.echo(f"{'rank':>4}  {'id':>7}  {'score':>7}  task")
        for r, (s, i) in enumerate(zip(scores[0], ids[0], strict=True), 1):
            if i < 0:
                break
            click.echo(f"{r:>4}  {i:>7}  {s:>7.4f}  {idx.task_of(int(i))}")


def nearest_tasks(emb: np.ndarray, zoo_emb: np.ndarray, zoo_tasks: list[str], k: int = 3):
    """Per query embedding, the k zoo tasks with the highest mean cosine to it."""
    sims = emb @ zoo_emb.T
    names = sorted(set(zoo_tasks))
    col = {t: i for i, t in enumerate(names)}
    which = np.asarray([col[t] for t in zoo_tasks])
    means = np.stack([sims[:, which == i].mean(axis=1) for i in range(len(names))], axis=1)
    out = []
    for row in means:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([(names[i], float(row[i])) for i in top])
    return out


def compare_with_model(
    a: str, b: str, model_dir: str, spec=None, zoo: str | None = None
) -> tuple[float, list | None]:
    """LPS cosine of checkpoints `a` and `b`; with `zoo`, the zoo tasks nearest to each."""
    from paramsim.weights import load

    lps = _load_model(model_dir)
    nets = [load(a, spec), load(b, spec)]
    emb = lps.embed(nets)
    score = float(emb[0] @ emb[1])
    near = None
    if zoo:
        znets, _, names = resolve_models([zoo])
        near = nearest_tasks(emb, lps.embed(znets), names)
    return score, near
