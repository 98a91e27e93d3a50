"""Using the similarity: task-relation maps, source selection for transfer, and the
one-command report (`paramsim relate | transfer | reproduce`)."""

from paramsim.use._common import Similarity, load_similarity
from paramsim.use.relate import relate, write_relation
from paramsim.use.reproduce import ReproduceConfig, reproduce
from paramsim.use.transfer import (
    TransferConfig,
    evaluate_transfer,
    fine_tune,
    select_sources,
    train_probe,
    write_transfer,
)

__all__ = [
    "ReproduceConfig",
    "Similarity",
    "TransferConfig",
    "evaluate_transfer",
    "fine_tune",
    "load_similarity",
    "relate",
    "reproduce",
    "select_sources",
    "train_probe",
    "write_relation",
    "write_transfer",
]
