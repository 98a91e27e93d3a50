"""How near a new task's probe model lands to the stored models, as a similarity rule sees it.

    python benchmarks/probe_nearness.py report/transfer          # after paramsim reproduce

Reads a `paramsim transfer` run's `transfer-matrices.npz` (every draw's score of every
candidate; the target's own task is never a candidate) and prints, per similarity rule, the
quantiles over draws of the best candidate's score and of the 10th best. For a cosine rule
such as `lps` this is how far a selection's query sits from what an index holds, which decides
how much of the index `search --exact` reads (`benchmarks/bench_search.py --near`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def kth_best(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k-th highest finite score (NaN marks a model that is not a candidate)."""
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    return -np.partition(-filled, k - 1, axis=1)[:, k - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="--out of a paramsim transfer run (or its npz)")
    ap.add_argument("--rules", default="lps,chain,gram1", help="similarity rules to read")
    args = ap.parse_args()
    path = args.run if args.run.suffix == ".npz" else args.run / "transfer-matrices.npz"
    with np.load(path, allow_pickle=False) as z:
        have = {n.removeprefix("score:"): z[n] for n in z.files if n.startswith("score:")}
    print(f"{path}: {len(next(iter(have.values())))} draws")
    head = " ".join(f"q{int(q * 100):02d}" for q in QUANTILES)
    print(f"{'rule':<8} {'rank':<10} {head}  candidates per draw")
    for rule in args.rules.split(","):
        if rule not in have:
            raise SystemExit(f"no scores of {rule!r} in {path}; it has {sorted(have)}")
        scores = have[rule]
        count = int(np.median(np.isfinite(scores).sum(axis=1)))
        for k, rank in ((1, "best"), (10, "10th best")):
            values = " ".join(f"{v:.3f}" for v in np.quantile(kth_best(scores, k), QUANTILES))
            print(f"{rule:<8} {rank:<10} {values}  {count}")


if __name__ == "__main__":
    main()
