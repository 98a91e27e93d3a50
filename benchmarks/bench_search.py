"""Search at scale: recall@10 against exact search and ms per query, for the index kinds of
`paramsim index build --kind`, over synthetic unit vectors of the LPS embedding dimension.

    python benchmarks/bench_search.py                       # 1M clustered vectors, dim 128
    python benchmarks/bench_search.py --data uniform        # the worst case: no structure
    python benchmarks/bench_search.py --kinds exact,ivf-exact --exact-nlist 4000,16000
    python benchmarks/bench_search.py --kinds hnsw,ivf-exact --near 0.4 --select   # far queries

Data: `clustered` draws models around n/100 task centres (cosine within a task about 0.8,
across tasks about 0), the shape LPS embeddings have; queries are new models of the same
tasks. `uniform` is uniform on the sphere, where no index can use structure. Ground truth is
the exact float32 scan. `ivf-exact` is `search --exact` on an ivf index of each
--exact-nlist: the exhaustive answer from the cells whose bound can hold it; it prints the
share of cells and of vectors read. `--near A` makes the queries far instead: each at cosine
A to one task centre and random otherwise, as a new task's probe model is (in `paramsim
reproduce`'s transfer run a probe's most similar stored model of another task had a median
LPS cosine of 0.42: `benchmarks/probe_nearness.py`). `--select` also times whole selections:
one probe model embedded by a default LPS, then one query, for hnsw, ivf and ivf-exact. Every
search goes through `paramsim.index.EmbeddingIndex`, one query per call (what `paramsim
search` does), timed over --queries queries after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_data(n: int, dim: int, kind: str, seed: int, centres: np.ndarray | None = None):
    """Unit float32 vectors, made in blocks so 1M x 128 never needs float64 memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        if kind == "uniform":
            x = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            x = centres[rng.integers(0, len(centres), m)]
            x = x + 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def far_queries(n: int, centres: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """Unit vectors at `cosine` to a random centre's direction, random in the rest."""
    rng = np.random.default_rng(seed)
    u = centres[rng.integers(0, len(centres), n)]
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    r = rng.standard_normal(u.shape).astype(np.float32)
    r -= np.sum(r * u, axis=1, keepdims=True) * u
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return (cosine * u + np.sqrt(1 - cosine**2) * r).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def time_single(idx, q: np.ndarray, k: int, **kw) -> tuple[float, np.ndarray]:
    """ms per query, one query per call, and the ids found."""
    for row in q[:5]:
        idx.search(row[None], k, **kw)
    ids = np.empty((len(q), k), np.int64)
    start = time.perf_counter()
    for i, row in enumerate(q):
        ids[i] = idx.search(row[None], k, **kw)[1][0]
    return (time.perf_counter() - start) / len(q) * 1e3, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256, help="LPS embedding length (LPSConfig.out_dim)")
    ap.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--kinds", default="exact,fp16,hnsw,ivf")
    ap.add_argument("--ef", default="16,32,64,128", help="hnsw ef_search values to try")
    ap.add_argument("--nprobe", default="4,8,16,32", help="ivf nprobe values to try")
    ap.add_argument(
        "--exact-nlist", default="4000,16000", help="ivf-exact: cells of each index tried"
    )
    ap.add_argument(
        "--select",
        action="store_true",
        help="also time a whole weights-only selection for hnsw, ivf and ivf-exact (embed "
        "one probe model with a default LPS, then one query); needs --dim 256",
    )
    ap.add_argument(
        "--near",
        type=float,
        default=None,
        help="far queries: at this cosine to one task centre (a new task's probe), not new "
        "models of stored tasks",
    )
    ap.add_argument("--batch", type=int, default=100, help="also time exact in batches of this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        default=None,
        help="directory to keep built indexes in: a rerun times queries without rebuilding "
        "(build times are printed by the run that built them)",
    )
    ap.add_argument("--build-only", action="store_true", help="with --cache: build, no timing")
    args = ap.parse_args()

    import faiss

    from paramsim.index import EmbeddingIndex

    threads = [int(t) for t in args.threads.split(",")]
    kinds = args.kinds.split(",")
    k = 10
    centres = None
    if args.data == "clustered":
        rng = np.random.default_rng(args.seed + 7)
        centres = rng.standard_normal((max(1, args.n // 100), args.dim), dtype=np.float32)
    t0 = time.perf_counter()
    x = make_data(args.n, args.dim, args.data, args.seed, centres)
    if args.near is not None:
        if centres is None or not 0 <= args.near < 1:
            raise SystemExit("--near needs --data clustered and a cosine in [0, 1)")
        q = far_queries(args.queries, centres, args.near, args.seed + 1)
    else:
        q = make_data(args.queries, args.dim, args.data, args.seed + 1, centres)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"data: {args.n:,} x {args.dim} {args.data}, {args.queries} queries "
        f"({time.perf_counter() - t0:.1f} s to make)"
    )

    from pathlib import Path

    cache = Path(args.cache) if args.cache else None
    tag = f"{args.data}-{args.n}-{args.dim}-{args.seed}"

    def built(name: str, make):
        """An index from the cache, or built now (and cached); (index, build seconds)."""
        path = cache / f"{tag}-{name}" if cache else None
        if path is not None and path.exists():
            return EmbeddingIndex.load(path), None
        faiss.omp_set_num_threads(max(threads))
        start = time.perf_counter()
        idx = make()
        idx.add(x)
        seconds = time.perf_counter() - start
        if path is not None:
            idx.save(path)
        print(f"built {name} in {seconds:.1f} s", flush=True)
        return idx, seconds

    exact, _ = built("exact", lambda: EmbeddingIndex(args.dim))
    faiss.omp_set_num_threads(max(threads))
    scores, truth = exact.search(q, k)
    print(
        "queries' best cosine to a stored vector: median "
        f"{np.median(scores[:, 0]):.3f}, 10th best median {np.median(scores[:, -1]):.3f}"
    )
    if args.build_only:
        for name, make in (
            ("fp16", lambda: EmbeddingIndex(args.dim, storage="fp16")),
            ("hnsw", lambda: EmbeddingIndex(args.dim, kind="hnsw")),
            ("ivf", lambda: EmbeddingIndex(args.dim, kind="ivf")),
        ):
            if name in kinds:
                built(name, make)
        return
    selection = Selection(args.queries, k, exact) if args.select else None
    print(f"{'index':<28} {'build s':>8} {'threads':>7} {'recall@10':>9} {'ms/query':>9}")

    def row(name, build_s, t, rec, ms):
        b = f"{build_s:8.1f}" if build_s is not None else f"{'':>8}"
        print(f"{name:<28} {b} {t:>7} {rec:>9.4f} {ms:>9.3f}", flush=True)

    if "exact" in kinds:
        for t in threads:
            faiss.omp_set_num_threads(t)
            ms, ids = time_single(exact, q, k)
            row("exact float32", None, t, recall(ids, truth), ms)
            start = time.perf_counter()
            for b in range(0, len(q), args.batch):
                exact.search(q[b : b + args.batch], k)
            ms_b = (time.perf_counter() - start) / len(q) * 1e3
            row(f"exact float32, batch {args.batch}", None, t, 1.0, ms_b)
    if "fp16" in kinds:
        fp16, build = built("fp16", lambda: EmbeddingIndex(args.dim, storage="fp16"))
        for t in threads:
            faiss.omp_set_num_threads(t)
            ms, ids = time_single(fp16, q, k)
            row("exact fp16", build, t, recall(ids, truth), ms)
        del fp16
    del exact
    for kind, key, values in (("hnsw", "ef_search", args.ef), ("ivf", "nprobe", args.nprobe)):
        if kind not in kinds:
            continue
        idx, build = built(kind, lambda kind=kind: EmbeddingIndex(args.dim, kind=kind))
        extra = f" nlist {idx.params['nlist']}" if kind == "ivf" else ""
        for v in (int(s) for s in values.split(",")):
            for t in threads:
                faiss.omp_set_num_threads(t)
                ms, ids = time_single(idx, q, k, **{key: v})
                row(f"{kind}{extra} {key} {v}", build, t, recall(ids, truth), ms)
                build = None
                if selection is not None:
                    selection.report(idx, t, **{key: v})
        del idx
    if "ivf-exact" in kinds:
        for nlist in (int(s) for s in args.exact_nlist.split(",")):
            idx, build = built(
                f"ivf{nlist}",
                lambda n=nlist: EmbeddingIndex(args.dim, kind="ivf", params={"nlist": n}),
            )
            from paramsim.index_bounded import cell_cones

            start = time.perf_counter()
            idx._cones = cell_cones(idx._index)  # what the first --exact query of a load does
            print(f"  cones of {nlist} cells read in {time.perf_counter() - start:.2f} s")
            cells, vectors = read_share(idx, q, k)
            for t in threads:
                faiss.omp_set_num_threads(t)
                ms, ids = time_single(idx, q, k, exact=True)
                row(f"ivf nlist {nlist} --exact", build, t, recall(ids, truth), ms)
                build = None
            print(
                f"  read per query: {cells:.2%} of the cells, {vectors:.2%} of the vectors "
                "(mean over the queries)",
                flush=True,
            )
            if selection is not None:
                for t in threads:
                    selection.report(idx, t, exact=True)
            del idx
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


class Selection:
    """Whole weights-only source selections once the probe model is trained: its LPS
    embedding (a default, untrained LPS on a random MLP 64-32-32-2: trained weights cost the
    same) and one query, one probe per call. The probes' exact answers come from the flat
    scan, and each kind's recall is measured on these probes, which land far from every
    stored vector whatever --near says."""

    def __init__(self, n: int, k: int, exact) -> None:
        from bench_lps import random_mlps
        from paramsim.lps import LPSConfig, LPSNet

        self.k = k
        self.net = LPSNet(LPSConfig(input_shape=(1, 8, 8)))
        self.probes = random_mlps(n + 5, seed=1)
        vectors = self.net.embed(self.probes[5:])
        scores, self.truth = exact.search(vectors, k)
        print(
            f"selection probes: {n}, best cosine to a stored vector median "
            f"{np.median(scores[:, 0]):.3f}"
        )

    def report(self, idx, threads: int, **search_kw) -> None:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        for probe in self.probes[:5]:
            idx.search(self.net.embed([probe]), self.k, **search_kw)
        ids = np.empty_like(self.truth)
        start = time.perf_counter()
        for i, probe in enumerate(self.probes[5:]):
            ids[i] = idx.search(self.net.embed([probe]), self.k, **search_kw)[1][0]
        ms = (time.perf_counter() - start) / len(ids) * 1e3
        setting = ", ".join(f"{key} {v}" for key, v in search_kw.items())
        print(
            f"  selection ({setting}), {threads} thread(s): {ms:.2f} ms each, "
            f"recall@{self.k} {recall(ids, self.truth):.4f}",
            flush=True,
        )


def read_share(idx, q: np.ndarray, k: int) -> tuple[float, float]:
    """Mean share of the cells and of the vectors an exact ivf search reads per query."""
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    _, _, cells, vectors = idx.bounded_search(unit, k)
    return float(np.mean(cells) / idx.params["nlist"]), float(np.mean(vectors) / len(idx))


if __name__ == "__main__":
    main()
