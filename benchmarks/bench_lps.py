"""Cost and held-out quality of LPS.

    python benchmarks/bench_lps.py --zoo /work/zoos/digits-pairs   # fit (auxiliary zoo too)
    python benchmarks/bench_lps.py --skip-fit --search-n 1000000    # embedding, search
    python benchmarks/bench_lps.py --heldout /tmp/zoo-dp --methods lps,gram1 --splits 5 \
        --extra-zoo /tmp/zoo-groups          # held-out mAP via paramsim.eval.evaluate
    python benchmarks/bench_lps.py --crossarch /work/zoos/digits-pairs-mixed --splits 5

Prints one line per measurement; every number comes from this run. Held-out runs use
`paramsim.eval.make_splits(seed=0, seen_fraction=0)`: every method sees the same splits and
learned ones train on all models of the training tasks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def random_mlps(n: int, widths=(64, 32, 32, 2), seed: int = 0, input_shape=(1, 8, 8)):
    from paramsim.weights import Layer, Network

    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(n):
        layers = []
        for i in range(1, len(widths)):
            w = torch.randn(widths[i], widths[i - 1], generator=g) / widths[i - 1] ** 0.5
            post = ("relu",) if i < len(widths) - 1 else ()
            layers.append(Layer("linear", w, torch.zeros(widths[i]), post=post))
        nets.append(Network(tuple(layers), input_shape, ("flatten",)))
    return nets


def random_cnns(n: int, channels=(8, 16), input_shape=(1, 8, 8), pools=(), seed: int = 0):
    """CNNs in canonical form: conv3x3-ReLU[-maxpool] per channel count, GAP, linear."""
    from paramsim.weights import Layer, Network

    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(n):
        layers, prev = [], input_shape[0]
        for i, c in enumerate(channels):
            w = torch.randn(c, prev, 3, 3, generator=g) / (prev * 9) ** 0.5
            post = ("relu",) + (("maxpool2",) if i in pools else ())
            if i == len(channels) - 1:
                post += ("gap",)
            layers.append(Layer("conv", w, torch.zeros(c), padding=1, post=post))
            prev = c
        layers.append(
            Layer("linear", torch.randn(2, prev, generator=g) / prev**0.5, torch.zeros(2))
        )
        nets.append(Network(tuple(layers), input_shape, ()))
    return nets


def bench_fit(zoo: str, extra: str | None, threads: int) -> None:
    """The default fit's cost: its auxiliary zoo built from scratch (in a temporary directory,
    so a cached one is not reused), then the fit itself."""
    import tempfile

    from paramsim.lps import LPS, FitConfig
    from paramsim.lps.auxiliary import TASKS_PER_ZOO_TASK, auxiliary_recipe
    from paramsim.zoo import build_zoo, open_zoo

    torch.set_num_threads(threads)
    z = open_zoo(zoo)
    nets, tasks = z.networks(), [r.task for r in z.records]
    fc = FitConfig()
    en, et, aux_s = [], [], 0.0
    if extra:
        ez = open_zoo(extra)
        en, et = ez.networks(), [r.task for r in ez.records]
    elif fc.aux_tasks > 0:
        n = min(fc.aux_tasks, TASKS_PER_ZOO_TASK * len(z.tasks))
        rec = auxiliary_recipe(z, n, fc.aux_models_per_task)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_zoo(
                rec,
                Path(tmp) / "aux",
                seed=int(z.meta["seed"]) + 1,
                data_dir=z.meta.get("data_dir"),
                progress=False,
            )
            aux_s = time.perf_counter() - t0
            ez = open_zoo(Path(tmp) / "aux")
            en, et = ez.networks(), [r.task for r in ez.records]
    t0 = time.perf_counter()
    m = LPS(fit_config=fc).fit(nets, tasks, extra_networks=en, extra_tasks=et)
    dt = time.perf_counter() - t0
    epochs = m.meta["history"][-1]["epoch"]
    print(
        f"fit {Path(zoo).name}: {len(nets)} zoo models + {m.meta['n_extra_models']} auxiliary, "
        f"{threads} thread(s): auxiliary zoo {aux_s:.1f} s + fit {dt:.1f} s = "
        f"{aux_s + dt:.1f} s; {epochs} epochs (best {m.meta['best_epoch']}), "
        f"{dt / max(epochs, 1):.2f} s/epoch; load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )


def bench_embed(n: int) -> None:
    """Embedding throughput of the default LPS (untrained weights cost the same)."""
    from paramsim.lps import LPSConfig, LPSNet

    cases = [
        ("MLPs 64-32-32-2", (1, 8, 8), random_mlps(n)),
        ("MLPs 784-32-32-2", (1, 28, 28), random_mlps(n, (784, 32, 32, 2), 0, (1, 28, 28))),
        ("CNNs 8-16 on 8x8", (1, 8, 8), random_cnns(n // 4)),
        (
            "CNNs 8-16-32 on 28x28",
            (1, 28, 28),
            random_cnns(n // 16, (8, 16, 32), (1, 28, 28), pools=(0, 1)),
        ),
    ]
    for label, shape, nets in cases:
        net = LPSNet(LPSConfig(input_shape=shape))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            net.embed(nets[:16])  # warm-up
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                net.embed(nets)
                best = min(best, time.perf_counter() - t0)
            print(
                f"embed lps: {len(nets)} {label}, {threads} thread(s): "
                f"{len(nets) / best:.0f} models/s (best of 3)"
            )


def bench_params() -> None:
    from paramsim.lps import LPSConfig, LPSNet

    cfg = LPSConfig(input_shape=(3, 32, 32), func_branch=False)
    net = LPSNet(cfg)
    ours = net.n_head_params()
    d = cfg.input_dim
    authors = d * d * cfg.emb_dim
    print(
        f"params, paper MLP 3072-500-500-500-2, emb {cfg.emb_dim}: LPS weight head {ours:,} vs "
        f"authors' flattened-Gram layer {authors:,} ({d * d:,} inputs x {cfg.emb_dim}) = "
        f"{100 * ours / authors:.3f}%"
    )
    full = LPSNet(LPSConfig(input_shape=(3, 32, 32)))
    print(
        f"params, same with the probe branch: {full.n_head_params():,} (+ probes "
        f"{full.probes_raw.numel():,})"
    )


def bench_search(n: int, dim: int, n_queries: int) -> None:
    import faiss

    from paramsim.index import EmbeddingIndex

    rng = np.random.default_rng(0)
    for storage, threads in [("flat", 1), ("flat", 2), ("fp16", 1), ("fp16", 2)]:
        faiss.omp_set_num_threads(threads)
        idx = EmbeddingIndex(dim, storage=storage)
        for start in range(0, n, 200_000):
            idx.add(rng.standard_normal((min(200_000, n - start), dim), dtype=np.float32))
        q = rng.standard_normal((n_queries, dim), dtype=np.float32)
        idx.search(q[:2], 10)
        t0 = time.perf_counter()
        for i in range(n_queries):
            idx.search(q[i : i + 1], 10)
        single = (time.perf_counter() - t0) / n_queries
        t0 = time.perf_counter()
        idx.search(q, 10)
        batched = (time.perf_counter() - t0) / n_queries
        print(
            f"search ({storage}): {n:,} x {dim} stored, k=10, {threads} thread(s): "
            f"{1000 * single:.2f} ms/query one at a time, {1000 * batched:.2f} ms/query "
            f"in a batch of {n_queries}"
        )
        del idx


def heldout(zoo_dir: str, methods: str, n_splits: int, extra: str | None) -> None:
    """Held-out retrieval for LPS variants (with the extra zoo) and fixed methods alike."""
    from paramsim.eval import evaluate, make_splits
    from paramsim.eval.on_zoo import extra_from_zoo
    from paramsim.features.base import Context
    from paramsim.methods import make_method
    from paramsim.zoo import open_zoo

    z = open_zoo(zoo_dir)
    nets, tids = z.networks(), np.asarray(z.task_ids)
    tasks = [z.tasks[int(t)] for t in tids]
    splits = make_splits(tids, n_splits=n_splits, seed=0, seen_fraction=0.0)
    named = {name: make_method(name) for name in methods.split(",")}
    more = extra_from_zoo(extra) if extra else None
    ctx = Context(dataset=z.dataset())
    res = evaluate(nets, tasks, named, splits, ctx, strict=True, extra=more)
    for name, e in res["methods"].items():
        cells = "  ".join(
            f"{k} {e[k]['mean']:.3f} ± {e[k]['std']:.3f}"
            for k in ("map", "rank1", "relation_spearman")
        )
        print(f"heldout {Path(zoo_dir).name} {name}: {cells}  ({e['seconds']:.0f} s)")


def crossarch(zoo_dir: str, n_splits: int, extra: str | None, seed: int = 0) -> None:
    """Held-out mAP when queries and gallery have different architectures, for the default
    LPS fitted as `paramsim eval` fits it (its auxiliary zoo included unless `extra`)."""
    from paramsim.eval import make_splits
    from paramsim.features.base import Context
    from paramsim.lps import LPSMethod
    from paramsim.ranking import mean_average_precision as mean_ap
    from paramsim.zoo import open_zoo

    z = open_zoo(zoo_dir)
    nets, tids = z.networks(), np.asarray(z.task_ids)
    tasks = [z.tasks[int(t)] for t in tids]
    arch = np.asarray([r.arch.label for r in z.records])
    scores: dict[str, list[float]] = {}
    for sp in make_splits(tids, n_splits=n_splits, seed=seed, seen_fraction=0.0):
        tr, va, te = list(sp.train_ids), list(sp.val_ids), np.asarray(sp.test_ids)
        m = LPSMethod("lps", extra_zoo=extra, exclude_tasks=[tasks[i] for i in te])
        m.fit(
            [nets[i] for i in tr],
            [tasks[i] for i in tr],
            Context(seed=seed, zoo=zoo_dir),
            val=([nets[i] for i in va], [tasks[i] for i in va]),
        )
        e = m.embed([nets[i] for i in te])
        S = e @ e.T
        lab, ar = tids[te], arch[te]
        cnn = np.char.startswith(ar.astype(str), "cnn")
        mlp_other = []
        for a in np.unique(ar[~cnn]):
            q, g = np.flatnonzero(ar == a), np.flatnonzero((ar != a) & ~cnn)
            mlp_other.append(mean_ap(S[np.ix_(q, g)], lab[q], lab[g]))
        q, g = np.flatnonzero(~cnn), np.flatnonzero(cnn)
        got = {
            "all": mean_ap(S, lab, lab, exclude=np.eye(len(lab), dtype=bool)),
            "mlp->other mlp archs": float(np.mean(mlp_other)),
            "mlp->cnn": mean_ap(S[np.ix_(q, g)], lab[q], lab[g]) if len(g) else float("nan"),
            "cnn->mlp": mean_ap(S[np.ix_(g, q)], lab[g], lab[q]) if len(g) else float("nan"),
        }
        for k, v in got.items():
            scores.setdefault(k, []).append(v)
    for k, v in scores.items():
        std = np.std(v, ddof=1) if len(v) > 1 else 0.0
        print(f"crossarch {Path(zoo_dir).name} {k}: mAP {np.mean(v):.3f} ± {std:.3f}")


def rescale_check(model_dir: str, zoo_dir: str, n: int = 100) -> None:
    """Cosine between zoo models' embeddings and those of ReLU-rescaled twins (same function)."""
    from dataclasses import replace

    from paramsim.lps import LPS
    from paramsim.zoo import open_zoo

    m, z = LPS.load(model_dir), open_zoo(zoo_dir)
    nets = z.networks(range(n))
    g = torch.Generator().manual_seed(0)
    for s in (0.5, 1.0):
        twins = []
        for net in nets:
            layers = list(net.layers)
            for i in range(len(layers) - 1):
                a = torch.exp((torch.rand(layers[i].units, generator=g) * 2 - 1) * s)
                cur, nxt = layers[i], layers[i + 1]
                layers[i] = replace(cur, weight=cur.weight * a[:, None], bias=cur.bias * a)
                layers[i + 1] = replace(nxt, weight=nxt.weight / a[None, :])
            twins.append(replace(net, layers=tuple(layers)))
        e0, e1 = m.embed(nets), m.embed(twins)
        cos = (e0 * e1).sum(1)
        lab = np.asarray(z.task_ids)[:n]
        same = (e0 @ e0.T)[(lab[:, None] == lab[None, :]) & ~np.eye(n, dtype=bool)]
        print(
            f"rescale e^U(-{s},{s}) on every hidden layer of {n} MLPs: cos(original, twin) "
            f"mean {cos.mean():.4f} min {cos.min():.4f}; between models of one task "
            f"{same.mean():.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None, help="zoo for the fit timing (e.g. digits-pairs)")
    ap.add_argument("--extra-zoo", default=None)
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--fit-threads", type=int, default=2)
    ap.add_argument("--embed-n", type=int, default=4000)
    ap.add_argument("--search-n", type=int, default=1_000_000)
    ap.add_argument("--search-dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--heldout", default=None, help="zoo: held-out mAP of --methods")
    ap.add_argument("--crossarch", default=None, help="zoo with several architectures")
    ap.add_argument("--methods", default="lps")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="of the splits (--crossarch)")
    ap.add_argument("--rescale", nargs=2, metavar=("MODEL", "ZOO"), default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (--heldout, --crossarch)"
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.rescale:
        rescale_check(*a.rescale)
        return
    if a.heldout or a.crossarch:
        if a.heldout:
            heldout(a.heldout, a.methods, a.splits, a.extra_zoo)
        if a.crossarch:
            crossarch(a.crossarch, a.splits, a.extra_zoo, a.seed)
        return
    if a.zoo and not a.skip_fit:
        bench_fit(a.zoo, a.extra_zoo, a.fit_threads)
    bench_embed(a.embed_n)
    bench_params()
    bench_search(a.search_n, a.search_dim, a.queries)


if __name__ == "__main__":
    main()
