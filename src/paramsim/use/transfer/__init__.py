"""Source-model selection for few-shot transfer, and its evaluation on a zoo.

One job per module:

- `config`: `TransferConfig`, every setting that determines the numbers;
- `shots`: the K-shot draws, probe seeds and task folds;
- `selection`: the rules that turn similarities into a pick (`choose_source`);
- `rules`: names of selection rules (`--methods`): similarity, estimator, hybrid, ranker;
- `estimators`: LogME, LEEP, NCE and k-NN on a source's outputs for the shots;
- `estimate`: those estimators run over every draw's candidates (one forward pass each);
- `ranker`: the learned weights-only selector (`rank:BASE`);
- `metrics`: chosen accuracy, shares of both oracles' gains, regret, weighted tau;
- `cost`: what one selection costs per rule, and how it grows with the candidates;
- `library`: the user's calls (`train_probe`, `select_sources`, `fine_tune`);
- `evaluate`: `evaluate_transfer`, every rule scored on the same fine-tuned sources;
- `stats`: per-task means and intervals;
- `report`: the table, the plot and transfer.json.

Fine-tuning itself lives next to the trainer, in `paramsim.zoo.finetune`.
"""

from paramsim.use.transfer.config import SELECT_RULES, TransferConfig
from paramsim.use.transfer.estimators import ESTIMATORS
from paramsim.use.transfer.evaluate import evaluate_transfer
from paramsim.use.transfer.library import (
    TransferHistory,
    fine_tune,
    select_sources,
    train_probe,
)
from paramsim.use.transfer.report import (
    estimator_notes,
    format_cost_table,
    format_transfer_table,
    plot_transfer,
    rule_views,
    transfer_key,
    write_transfer,
)
from paramsim.use.transfer.selection import choose_source, task_scores
from paramsim.use.transfer.shots import kshot

__all__ = [
    "ESTIMATORS",
    "SELECT_RULES",
    "TransferConfig",
    "TransferHistory",
    "choose_source",
    "estimator_notes",
    "evaluate_transfer",
    "fine_tune",
    "format_cost_table",
    "format_transfer_table",
    "kshot",
    "plot_transfer",
    "rule_views",
    "select_sources",
    "task_scores",
    "train_probe",
    "transfer_key",
    "write_transfer",
]
