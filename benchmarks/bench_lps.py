"""Cost of LPS: fit time on a zoo, embedding throughput, head size, index search time.

    python benchmarks/bench_lps.py --zoo /tmp/zoo-dp [--extra-zoo /tmp/zoo-groups]
    python benchmarks/bench_lps.py --skip-fit --search-n 1000000

Prints one line per measurement; every number comes from this run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def random_mlps(n: int, widths=(64, 32, 32, 2), seed: int = 0):
    from paramsim.weights import Layer, Network

    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(n):
        layers = []
        for i in range(1, len(widths)):
            w = torch.randn(widths[i], widths[i - 1], generator=g) / widths[i - 1] ** 0.5
            post = ("relu",) if i < len(widths) - 1 else ()
            layers.append(Layer("linear", w, torch.zeros(widths[i]), post=post))
        nets.append(Network(tuple(layers), (1, 8, 8), ("flatten",)))
    return nets


def bench_fit(zoo: str, extra: str | None, threads: int) -> None:
    from paramsim.lps import LPS
    from paramsim.zoo import Zoo

    torch.set_num_threads(threads)
    z = Zoo.open(zoo)
    nets, tasks = z.networks(), [r.task for r in z.records]
    en, et = [], []
    if extra:
        ez = Zoo.open(extra)
        en, et = ez.networks(), [r.task for r in ez.records]
    t0 = time.perf_counter()
    m = LPS().fit(nets, tasks, extra_networks=en, extra_tasks=et)
    dt = time.perf_counter() - t0
    epochs = m.meta["history"][-1]["epoch"]
    print(
        f"fit: {len(nets)} zoo models + {m.meta['n_extra_models']} extra, {threads} thread(s): "
        f"{dt:.1f} s total, {epochs} epochs (best {m.meta['best_epoch']}), "
        f"{dt / max(epochs, 1):.2f} s/epoch"
    )


def bench_embed(n: int) -> None:
    from paramsim.lps import LPSConfig, LPSNet

    nets = random_mlps(n)
    for variant, cfg in [("lps", LPSConfig()), ("lps-nofunc", LPSConfig(func_branch=False))]:
        net = LPSNet(cfg)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            net.embed(nets[:64])  # warm-up
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                net.embed(nets)
                best = min(best, time.perf_counter() - t0)
            print(
                f"embed {variant}: {n} MLPs 64-32-32-2, {threads} thread(s): "
                f"{n / best:.0f} models/s (best of 3)"
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
    a = ap.parse_args()
    if a.zoo and not a.skip_fit:
        bench_fit(a.zoo, a.extra_zoo, a.fit_threads)
    bench_embed(a.embed_n)
    bench_params()
    bench_search(a.search_n, a.search_dim, a.queries)


if __name__ == "__main__":
    main()
