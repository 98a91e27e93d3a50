"""Held-out mAP and relation rho of the default LPS embedding's parts, on seed-100 splits.

    python benchmarks/lps_parts.py ZOO N_SPLITS

The default embedding is a weight part and a function part side by side; this fits the
default per split (as `paramsim eval` does) and scores each part alone, both, and the weight
part at half and double gain.
"""

import sys

import numpy as np
import torch

from paramsim.data import relation_matrix
from paramsim.eval import index_tasks, make_splits, metrics
from paramsim.features.base import Context
from paramsim.lps import LPSMethod
from paramsim.zoo import open_zoo


def main() -> None:
    torch.set_num_threads(2)
    zoo_dir = sys.argv[1]
    z = open_zoo(zoo_dir)
    nets = z.networks()
    mt = [z.tasks[int(t)] for t in z.task_ids]
    labels, tasks = index_tasks(mt)
    rel = relation_matrix(tasks).numpy()
    for sp in make_splits(labels, n_splits=int(sys.argv[2]), seed=100):
        m = LPSMethod("lps")
        tr, va = list(sp.train_ids), list(sp.val_ids)
        m.fit(
            [nets[i] for i in tr],
            [mt[i] for i in tr],
            Context(seed=100, zoo=zoo_dir),
            val=([nets[i] for i in va], [mt[i] for i in va]),
        )
        te = np.asarray(sp.test_ids)
        e = m.embed([nets[i] for i in te]).astype(np.float64)
        h = e.shape[1] // 2
        lab = labels[te]
        loc = np.arange(len(te))
        out = []
        for name, x in [("full", e), ("weight", e[:, :h]), ("func", e[:, h:])] + [
            (f"w{a}", np.hstack([e[:, :h] * a, e[:, h:]])) for a in (0.5, 2.0)
        ]:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            S = x @ x.T
            ap = metrics.retrieval(S, lab, loc, loc, 10).map
            rho = metrics.relation_spearman(S, lab, loc, rel)
            out.append(f"{name} map {ap:.3f} rho {rho:.3f}")
        print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
