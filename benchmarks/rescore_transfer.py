"""Score a saved `paramsim transfer` run again with the current metrics, from its matrices.

    python benchmarks/rescore_transfer.py RUN_DIR

RUN_DIR holds `transfer.json` and `transfer-matrices.npz` (every rule's scores and every
candidate's fine-tuned and validation accuracy per draw). Nothing is fine-tuned again, so a
change to `paramsim.use.transfer.metrics` can be checked against a long run in seconds.
Prints, per rule and K, each metric before (the saved json) and now, and flags what moved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from paramsim.use.transfer.config import TransferConfig
from paramsim.use.transfer.metrics import score_rule
from paramsim.use.transfer.shots import Instance


def _summary(entry: dict) -> dict[str, float]:
    rules = entry["rules"]
    return {
        "model rule": rules["model"]["chosen"]["mean"],
        "task rule": rules["task"]["chosen"]["mean"],
        "weighted tau": entry["weighted_tau"]["mean"],
        "spearman": entry["spearman"]["mean"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    run = ap.parse_args().run
    saved = json.loads((run / "transfer.json").read_text())
    mats = np.load(run / "transfer-matrices.npz", allow_pickle=False)
    names = list(saved["tasks"])  # the zoo's task order, which the labels index
    labels = np.array([names.index(str(t)) for t in mats["model_tasks"]])
    instances = [
        Instance(names.index(i["task"]), i["shots"], i["repeat"], torch.zeros(1), torch.zeros(1))
        for i in saved["instances"]
    ]
    conf = saved["config"]
    cfg = TransferConfig(shots=tuple(conf["shots"]), select_top=conf.get("select_top", 0))
    moved = 0
    for key in mats.files:
        if not key.startswith("score:"):
            continue
        rule = key.removeprefix("score:")
        now = score_rule(
            instances, mats[key], mats["finetuned"], mats["validation"], labels, names, cfg
        )
        for k, entry in now.items():
            before, after = _summary(saved["methods"][rule]["shots"][k]), _summary(entry)
            parts = []
            for name, b in before.items():
                a = after[name]
                same = (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9
                moved += not same
                parts.append(f"{name} {b:.4f}" + ("" if same else f" -> {a:.4f} (moved)"))
            print(f"{rule:>20} K={k:>2}: " + "; ".join(parts))
    print(f"{moved} value(s) moved")


if __name__ == "__main__":
    main()
