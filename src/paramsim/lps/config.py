"""Configuration of the LPS network and of its training, stored as JSON next to the weights.

Every field carries its type and bounds (`_int`, `_float`, ... below), checked whenever a
config is made, so a damaged or hand-edited lps.json is a one-line ParamsimError before
anything is allocated; the bounds keep what a config can ask for to a few hundred MB.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from paramsim.errors import ParamsimError

FORMAT_VERSION = 1
MAX_INPUT_SIDE = 4096
MAX_INPUT_VALUES = 3 * 512 * 512  # values of one input (c * h * w)
MAX_PARAMETERS = 2**25  # floats the LPS network may hold: 128 MiB in float32


def _int(default: int, lo: int, hi: int) -> Any:
    return field(default=default, metadata={"kind": "int", "range": (lo, hi)})


def _float(default: float, lo: float, hi: float, lo_open: bool = False) -> Any:
    return field(default=default, metadata={"kind": "float", "range": (lo, hi), "lo_open": lo_open})


def _bool(default: bool) -> Any:
    return field(default=default, metadata={"kind": "bool"})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"kind": "choice", "choices": choices})


def _short(value: Any) -> str:
    """A value for a one-line message, however large the damaged file made it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fields(obj: Any, what: str) -> None:
    """Type and bounds of every field of dataclass `obj`, from the field's metadata."""
    for f in fields(obj):
        kind = f.metadata.get("kind")
        value = getattr(obj, f.name)
        where = f"{what} field {f.name}"
        if kind == "bool":
            if not isinstance(value, bool):
                raise ParamsimError(f"{where} must be true or false, got {_short(value)}")
        elif kind == "choice":
            if not isinstance(value, str) or value not in f.metadata["choices"]:
                allowed = ", ".join(f.metadata["choices"])
                raise ParamsimError(
                    f"unknown {f.name} {_short(value)} in {what}; choose from {allowed}"
                )
        elif kind in ("int", "float"):
            lo, hi = f.metadata["range"]
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            else:
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                ok = ok and math.isfinite(value)
            if not ok:
                raise ParamsimError(f"{where} must be a finite {kind}, got {_short(value)}")
            low_ok = value > lo if f.metadata.get("lo_open") else value >= lo
            if not (low_ok and value <= hi):
                left = "(" if f.metadata.get("lo_open") else "["
                raise ParamsimError(f"{where} must be in {left}{lo}, {hi}], got {_short(value)}")
            object.__setattr__(obj, f.name, int(value) if kind == "int" else float(value))


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None, so `json.dumps(..., allow_nan=False)`
    writes valid JSON (bare NaN is not JSON; other readers reject it)."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _from_dict(cls: type, data: Any, what: str) -> Any:
    """`cls(**data)` for a JSON object, naming a wrong shape or unknown field in one line."""
    if not isinstance(data, dict):
        raise ParamsimError(f"{what} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - {f.name for f in fields(cls)})
    if unknown:
        shown = _short(unknown)
        raise ParamsimError(f"{what} has unknown fields {shown}; upgrade paramsim or refit")
    return cls(**data)


def _set_readout_size(n_in: int, hidden: int, emb: int) -> int:
    """Floats of one set readout (`paramsim.lps.model.SetReadout`): W1, b1 and W2."""
    return hidden * n_in + hidden + emb * hidden


@dataclass(frozen=True)
class LPSConfig:
    """What the similarity network reads and how it maps it to an embedding.

    The defaults are the design measured best on validation tasks (README.md, "The learned
    similarity"); the switches exist for ablations.
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)  # each side in [1, MAX_INPUT_SIDE]
    n_outputs: int = _int(2, 1, 4096)
    emb_dim: int = _int(128, 1, 4096)
    # weight-space branch (MLPs only; CNNs are carried by the function branch)
    weight_branch: bool = _bool(True)
    second_order: bool = _bool(True)  # Grams U^T G U of the chain at each depth
    class_direction: bool = _bool(True)  # signed first-order chain to the outputs (centred)
    chain: bool = _bool(True)  # False: first-layer Gram only (the "nochain" ablation)
    max_hidden_depths: int = _int(3, 0, 16)  # chain slots for hidden depths 1..K; deeper skipped
    rank: int = _int(80, 1, 4096)  # columns of U; U is the identity when the input (+ bias) fits
    bias: bool = _bool(True)  # carry biases as an extra input row of the chain
    unit_columns: bool = _bool(False)  # normalise each hidden unit's chain column
    signed_sqrt: bool = _bool(True)
    flat_head: bool = _bool(False)  # the authors' form: flattened d x d Grams, one linear layer
    # function-space branch
    func_branch: bool = _bool(True)
    n_probes: int = _int(32, 1, 1024)
    probe_gram: bool = _bool(False)  # Gram of last hidden activations on the probes
    probe_logits: bool = _bool(True)  # logit differences on the probes
    # the last hidden layer's units (a CNN's channels) through their probe responses, read as
    # a set (a deeper view of the function than the logits alone)
    probe_units: bool = _bool(False)
    # read the class direction and probe logits through their outer products (Z Z^T), blind to
    # which output a class sits on, so tasks sharing a class in opposite roles look alike
    # (variant lps-relation; off by default: it costs cross-architecture retrieval)
    sign_invariant: bool = _bool(False)  # the class direction (weight branch)
    probe_sign_invariant: bool = _bool(False)  # the probe logits (function branch)
    # per-output-unit readouts (ProbeLog, Horwitz et al. 2025): each output unit's centred
    # class direction and probe responses pass one small ReLU network and are summed over the
    # units, a set of class detectors; tasks sharing a class share a term, in any output order
    set_readout: bool = _bool(True)
    set_hidden: int = _int(256, 1, 4096)
    # "concat": [weight part, function part], so a CNN (function part only) meets an MLP on
    # the function part alone; "sum": both parts added in one space
    combine: str = _choice("concat", "concat", "sum")

    def __post_init__(self) -> None:
        shape = self.input_shape
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) != 3
            or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                for s in shape
            )
        ):
            raise ParamsimError(
                f"LPS config field input_shape must be 3 positive integers, got {_short(shape)}"
            )
        object.__setattr__(self, "input_shape", tuple(int(s) for s in shape))
        if max(self.input_shape) > MAX_INPUT_SIDE or self.input_dim > MAX_INPUT_VALUES:
            raise ParamsimError(
                f"LPS config field input_shape {self.input_shape} is larger than paramsim "
                f"handles (sides up to {MAX_INPUT_SIDE}, {MAX_INPUT_VALUES} values)"
            )
        _check_fields(self, "LPS config")
        if not (self.weight_branch or self.func_branch):
            raise ParamsimError(
                "LPS needs at least one branch; enable weight_branch or func_branch"
            )
        if self.weight_branch and not (self.second_order or self.class_direction):
            raise ParamsimError("the weight branch needs second_order or class_direction")
        if self.func_branch and not (self.probe_gram or self.probe_logits or self.probe_units):
            raise ParamsimError("the function branch needs probe_logits, probe_gram or probe_units")
        if self.combine not in ("sum", "concat"):
            raise ParamsimError(f"combine must be 'sum' or 'concat', not {self.combine!r}")
        if self.weight_branch and self.class_direction and not self.chain:
            raise ParamsimError("class_direction needs the chain (chain=True)")
        if self.n_parameters > MAX_PARAMETERS:
            raise ParamsimError(
                f"this LPS config asks for {self.n_parameters:,} parameters, more than "
                f"{MAX_PARAMETERS:,}; lower rank, emb_dim, n_probes or max_hidden_depths"
            )

    @property
    def input_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def n_parameters(self) -> int:
        """Floats `LPSNet(self)` holds (parameters and buffers), known before building it;
        the sizes follow `paramsim.lps.model.LPSNet.__init__` (a test keeps them equal)."""
        d = self.input_dim + int(self.bias)
        r = d if self.flat_head else min(self.rank, d)
        emb, k, p = self.emb_dim, self.n_outputs, self.n_probes
        slots = ((self.max_hidden_depths + 1) if self.chain else 1) if self.second_order else 0
        total = 2  # branch gains
        if self.weight_branch:
            if self.second_order:
                total += slots * d * (d if self.flat_head else r) + slots * emb * r * r
            if self.class_direction:
                total += d * r
                if self.set_readout:
                    total += _set_readout_size(r, self.set_hidden, emb)
                else:
                    total += emb * (r * r if self.sign_invariant else r * (1 if k == 2 else k))
            total += slots + int(self.class_direction)
        if self.func_branch:
            total += p * self.input_dim
            if self.probe_logits and self.set_readout:
                total += _set_readout_size(p, self.set_hidden, emb)
            elif self.probe_logits:
                total += emb * (p * p if self.probe_sign_invariant else (p if k == 2 else p * k))
            if self.probe_gram:
                total += emb * p * (p + 1) // 2
            if self.probe_units:
                total += _set_readout_size(p, self.set_hidden, emb)
            total += int(self.probe_logits) + int(self.probe_gram) + int(self.probe_units)
        return total

    @property
    def learned_probes(self) -> int:
        """Probes the network learns and reads: none without the function branch."""
        return self.n_probes if self.func_branch else 0

    @property
    def input_rows(self) -> int:
        """Rows of the weight chain: one per input, and one for the biases when read."""
        return self.input_dim + (1 if self.bias else 0)

    @property
    def kept_directions(self) -> int:
        """Columns of each input projection (U_l, V): the chain's rows it keeps."""
        return self.input_rows if self.flat_head else min(self.rank, self.input_rows)

    @property
    def projects_inputs(self) -> bool:
        """The weight branch projects its chain onto fewer directions than it has rows (U,
        V): where they start matters (`FitConfig.basis_init`)."""
        uses = self.weight_branch and (self.second_order or self.class_direction)
        return uses and self.kept_directions < self.input_rows

    @property
    def out_dim(self) -> int:
        """Length of an embedding: emb_dim, or emb_dim per branch when they are concatenated."""
        n = int(self.weight_branch) + int(self.func_branch)
        return self.emb_dim * (n if self.combine == "concat" else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LPSConfig:
        """A config from its JSON object; anything malformed is one ParamsimError."""
        try:
            return _from_dict(cls, data, "LPS config")
        except TypeError as exc:  # a required field missing
            raise ParamsimError(f"LPS config is incomplete: {exc}") from exc


@dataclass(frozen=True)
class FitConfig:
    """How the metric is trained. Everything random is drawn from `seed`."""

    loss: str = _choice("supcon", "supcon", "multisim", "ce")
    # most epochs: on seed-100 splits of three zoos, 15 gave the same held-out mAP and rho as
    # 30 (the validation mAP saturates early; its loss tie-break kept fits going)
    epochs: int = _int(15, 1, 10_000)
    # epochs without a better validation score before stopping: 10 (6 until session 18); on
    # seed-100/200 splits held-out rho kept rising for epochs after the validation mAP had
    # flattened at 1.0, and 10 raised digits-pairs and digits-pairs-cnn rho, fashion-pairs level
    patience: int = _int(10, 1, 10_000)
    # what breaks ties of the validation mAP (within 1e-3; frequent at 1.0): "relation", the
    # Spearman rho between shared classes and the similarity of each validation task to the
    # other validation tasks and to the training tasks (two models each); "objective", the
    # contrastive loss on the validation tasks plus relation_weight x their relation loss (the
    # default of session 18); "supcon", that contrastive loss alone (before). On seed-100/200
    # splits "relation" raised digits-pairs held-out rho from 0.716 to 0.818 (seed 200, 3
    # splits) and left seed 100 (0.827), held-out digit classes, digits-pairs-cnn,
    # digits-pairs-mixed and fashion-pairs level. Five validation tasks alone make 10 pairs;
    # with the training tasks, 120, and that rho tracked the held-out rho epoch by epoch
    val_tiebreak: str = _choice("relation", "supcon", "objective", "relation")
    lr: float = _float(1e-3, 0.0, 10.0, lo_open=True)
    # "cosine": every learning rate decays over `epochs` along half a cosine, to near 0 at
    # the last epoch; "constant": fixed
    lr_schedule: str = _choice("constant", "constant", "cosine")
    lr_probes: float = _float(0.1, 0.0, 10.0)
    weight_decay: float = _float(1e-4, 0.0, 10.0)
    temperature: float = _float(0.1, 0.0, 100.0, lo_open=True)
    tasks_per_batch: int = _int(64, 1, 65_536)
    models_per_task: int = _int(4, 1, 1024)
    min_batches: int = _int(8, 1, 100_000)  # per epoch, so a small zoo still gets enough steps
    val_fraction: float = _float(0.2, 0.0, 0.99)  # of training tasks, when no validation set
    rescale_aug: float = _float(0.5, 0.0, 5.0)  # log-uniform ReLU rescaling, +-this in log space
    noise_aug: float = _float(0.02, 0.0, 10.0)  # weight noise, relative to each layer's std
    branch_dropout: float = _float(0.5, 0.0, 1.0)  # drop the weight branch so probes align alone
    # weight of the relation loss: 1 - Pearson correlation, over the batch's task pairs, between
    # task-mean cosine and the number of shared classes (SupCon alone never ranks relations)
    relation_weight: float = _float(1.0, 0.0, 1000.0)  # 3.0 in the lps-relation variant
    # weight of the same contrastive loss on the function part alone: it is all a CNN has, so
    # it must rank tasks by itself for MLP <-> CNN retrieval
    func_loss_weight: float = _float(1.0, 0.0, 1000.0)
    # batches pair a task's MLPs with its CNNs (`pool.task_batches`); off by default: on a
    # seed-100 split of digits-pairs-mixed it lowered every cross-architecture measure
    balance_kinds: bool = _bool(False)
    # auxiliary group-task zoo built from the zoo's own recipe and cached beside it (used when
    # the zoo's directory is known: `paramsim fit`, `eval`, `reproduce`); 0 tasks: none
    aux_tasks: int = _int(150, 0, 10_000)
    aux_models_per_task: int = _int(4, 1, 100)
    # where the learned probes start: "data", training images of the zoo's own data set (of
    # the training tasks' classes; used when the fit knows the zoo), or "noise", uniform noise
    probe_init: str = _choice("data", "data", "noise")
    # where the weight branch's input projections (U, V) start when they keep fewer
    # directions than the input has: "data", the top principal directions of the training
    # images (a trained first layer moved inside their span, its random start did not), or
    # "random" orthonormal columns; used when the fit knows the zoo
    basis_init: str = _choice("data", "data", "random")
    seed: int = _int(0, 0, 2**63 - 1)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_fields(self, "fit config")
        if not isinstance(self.extra, dict):
            raise ParamsimError(
                f"fit config field extra must be an object, got {_short(self.extra)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> FitConfig:
        """A config from its JSON object; anything malformed is one ParamsimError."""
        return _from_dict(cls, data, "fit config")
