"""Configuration of the LPS network and of its training, stored as JSON next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from paramsim.errors import ParamsimError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LPSConfig:
    """What the similarity network reads and how it maps it to an embedding.

    The defaults are the design measured best on validation tasks (README.md, "The learned
    similarity"); the switches exist for ablations.
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)
    n_outputs: int = 2
    emb_dim: int = 128
    # weight-space branch (MLPs only; CNNs are carried by the function branch)
    weight_branch: bool = True
    second_order: bool = True  # Grams U^T G U of the chain at each depth
    class_direction: bool = True  # signed first-order chain to the outputs (centred columns)
    chain: bool = True  # False: first-layer Gram only (the "nochain" ablation)
    max_hidden_depths: int = 3  # chain slots for hidden depths 1..K; deeper ones are skipped
    rank: int = 80  # columns of U; U is the identity when the input (+ bias) fits
    bias: bool = True  # carry biases as an extra input row of the chain
    unit_columns: bool = False  # normalise each hidden unit's chain column (rescaling-invariant)
    signed_sqrt: bool = True
    flat_head: bool = False  # the authors' form: flattened d x d Grams into one linear layer
    # function-space branch
    func_branch: bool = True
    n_probes: int = 32
    probe_gram: bool = False  # Gram of last hidden activations on the probes (lower val mAP)
    probe_logits: bool = True  # logit differences on the probes
    # read the class direction and probe logits through their outer products (Z Z^T), blind to
    # which output a class sits on, so tasks sharing a class in opposite roles look alike
    # (variant lps-relation; off by default: it costs cross-architecture retrieval)
    sign_invariant: bool = False  # the class direction (weight branch)
    probe_sign_invariant: bool = False  # the probe logits (function branch)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if not (self.weight_branch or self.func_branch):
            raise ParamsimError(
                "LPS needs at least one branch; enable weight_branch or func_branch"
            )
        if self.weight_branch and not (self.second_order or self.class_direction):
            raise ParamsimError("the weight branch needs second_order or class_direction")
        if self.func_branch and not (self.probe_gram or self.probe_logits):
            raise ParamsimError("the function branch needs probe_gram or probe_logits")

    @property
    def input_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LPSConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ParamsimError(
                f"LPS config has unknown fields {sorted(unknown)}; upgrade paramsim or refit"
            )
        return cls(**data)


@dataclass(frozen=True)
class FitConfig:
    """How the metric is trained. Everything random is drawn from `seed`."""

    loss: str = "supcon"  # supcon | multisim | ce
    epochs: int = 30
    patience: int = 6  # epochs without a better validation mAP before stopping
    lr: float = 1e-3
    lr_probes: float = 0.1
    weight_decay: float = 1e-4
    temperature: float = 0.1
    tasks_per_batch: int = 64
    models_per_task: int = 4
    min_batches: int = 8  # per epoch, so a small zoo still gets enough steps per epoch
    val_fraction: float = 0.2  # of training tasks, when no validation set is given
    rescale_aug: float = 0.5  # log-uniform ReLU rescaling of hidden units, +-this in log space
    noise_aug: float = 0.02  # weight noise, relative to each layer's weight std
    branch_dropout: float = 0.5  # drop the weight branch so the function branch aligns alone
    # weight of the relation loss: 1 - Pearson correlation, over the batch's task pairs, between
    # task-mean cosine and the number of shared classes (SupCon alone never ranks relations)
    relation_weight: float = 0.0  # 3.0 in the lps-relation variant
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FitConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
