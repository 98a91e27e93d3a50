"""The settings of a transfer evaluation (everything that determines its numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from paramsim.errors import ParamsimError

SELECT_RULES = ("task", "model")

MATRICES = "matrices"
"""Key of the draw x model arrays in `evaluate_transfer`'s result: fine-tuned test and
validation accuracy and every rule's scores, NaN where a model was not a candidate. They go
to MATRICES_FILE beside transfer.json, so a new rule can be scored on the same fine-tunes."""
MATRICES_FILE = "transfer-matrices.npz"


@dataclass(frozen=True)
class TransferConfig:
    """Every setting that determines a transfer evaluation's numbers."""

    shots: tuple[int, ...] = (1, 5)
    repeats: int = 2  # random draws of the K-shot examples per target task
    probe_steps: int = 100
    probe_lr: float = 1e-2
    probe_init_scale: float = 0.2  # small: the probe's weights then mostly hold what it learned
    probes: int = 1  # probe models per draw (seeds differ); their similarities are averaged
    finetune_steps: int = 40
    finetune_lr: float = 3e-3
    finetune: str = "all"  # "all" layers or only the "head"
    head: str = "reset"  # "reset": zero the source's output layer first; "keep" it
    folds: int = 3  # task folds for fitting learned methods without the target task
    targets: tuple[str, ...] | None = None  # task names to evaluate (default: all)
    seed: int = 0
    chunk: int = 2048  # at most this many fine-tunes per stacked run
    memory_budget_mb: int = 512  # what one stacked run (fine-tunes, forward passes) may hold
    val_per_class: int = 50  # held-out training examples per class for the validation oracle
    # candidate sources: this many models of each other task (0: all). Every candidate is
    # fine-tuned on every draw; 3 keeps the default run to minutes on a 495-model zoo
    sources_per_task: int = 3
    costs: bool = True  # time one selection per rule at three candidate counts
    select: str = "model"  # primary selection rule: "task" (mean over a task's models) or "model"
    select_top: int = 0  # task rule: mean of the task's m most similar models (0: all of them)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        if not self.shots or min(self.shots) < 1:
            raise ParamsimError(f"shots must be positive integers, got {self.shots}")
        if len(set(self.shots)) != len(self.shots):
            raise ParamsimError(f"shots {self.shots} names a K twice; give each K once")
        if self.probes < 1:
            raise ParamsimError(f"probes must be at least 1, got {self.probes}")
        if self.repeats < 1:
            raise ParamsimError(f"repeats must be at least 1, got {self.repeats}")
        if self.finetune not in ("all", "head"):
            raise ParamsimError(f"finetune must be 'all' or 'head', not {self.finetune!r}")
        if self.head not in ("reset", "keep"):
            raise ParamsimError(f"head must be 'reset' or 'keep', not {self.head!r}")
        if self.folds < 2:
            raise ParamsimError(f"folds must be at least 2, got {self.folds}")
        if self.select not in SELECT_RULES:
            raise ParamsimError(f"select must be 'model' or 'task', not {self.select!r}")
        if self.finetune_steps < 1 or self.probe_steps < 1:
            raise ParamsimError(
                f"finetune_steps and probe_steps must be at least 1, got "
                f"{self.finetune_steps} and {self.probe_steps}"
            )
        if self.memory_budget_mb < 16:
            raise ParamsimError(
                f"memory budget must be at least 16 MB, got {self.memory_budget_mb}"
            )
        if self.val_per_class < 0:
            raise ParamsimError(f"val_per_class must be 0 or more, got {self.val_per_class}")
        if self.sources_per_task < 0:
            raise ParamsimError(
                f"sources_per_task must be 0 (all) or positive, got {self.sources_per_task}"
            )
        if self.chunk < 1:
            raise ParamsimError(f"chunk must be at least 1, got {self.chunk}")
        if self.select_top < 0:
            raise ParamsimError(f"select_top must be 0 (all) or positive, got {self.select_top}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def budget(self):
        """The memory budget as the trainer's object."""
        from paramsim.zoo.finetune import MemoryBudget

        return MemoryBudget(self.memory_budget_mb * 2**20)
