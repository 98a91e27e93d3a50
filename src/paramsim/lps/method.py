"""LPS behind the common `Method` interface, with the ablation variants the eval tables use."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from paramsim.data import Task
from paramsim.errors import ParamsimError
from paramsim.features.base import Context, Method
from paramsim.lps.config import FitConfig, LPSConfig
from paramsim.lps.fit import LPS
from paramsim.lps.material import zoo_material, zoo_training_set
from paramsim.weights import Network

# switches per variant; every variant shares the training recipe unless it says otherwise
VARIANTS: dict[str, tuple[dict, dict]] = {
    "lps": ({}, {}),
    # the default before issue 9: signed readouts summed into one space, no auxiliary zoo,
    # no relation or function-part loss
    "lps-v1": (
        dict(set_readout=False, combine="sum"),
        dict(
            aux_tasks=0,
            relation_weight=0.0,
            func_loss_weight=0.0,
            probe_init="noise",
            basis_init="random",
        ),
    ),
    "lps-noaux": ({}, dict(aux_tasks=0)),
    "lps-authors": (
        dict(
            flat_head=True,
            signed_sqrt=False,
            bias=False,
            class_direction=False,
            func_branch=False,
        ),
        dict(loss="ce", rescale_aug=0.0, noise_aug=0.0, branch_dropout=0.0),
    ),
    "lps-nochain": (dict(chain=False, class_direction=False, func_branch=False), {}),
    "lps-first-order": (dict(second_order=False, func_branch=False), {}),
    "lps-noweights": (dict(weight_branch=False), {}),
    "lps-nofunc": (dict(func_branch=False), dict(branch_dropout=0.0)),
    # graded task relations: sign-invariant readouts plus the relation loss (validation-chosen)
    "lps-relation": (
        dict(sign_invariant=True, probe_sign_invariant=True, set_readout=False, combine="sum"),
        dict(relation_weight=3.0, func_loss_weight=0.0),
    ),
}


# FitConfig defaults of a variant that differ from today's: a caller's FitConfig or
# overrides still win (unlike the switches above, which define the variant); lps-v1 keeps
# the first default's budget and choice of epoch
VARIANT_DEFAULTS: dict[str, dict] = {
    "lps-v1": {"epochs": 30, "patience": 6, "val_tiebreak": "supcon"}
}


def variant_configs(
    variant: str,
    fit_config: FitConfig | None = None,
    config_overrides: dict | None = None,
    **fit_overrides,
) -> tuple[dict, FitConfig]:
    """The LPSConfig options and the FitConfig of a variant, merged in one order everywhere:
    defaults (`fit_config`, else today's with the variant's own defaults), then the variant's
    switches, then the caller's overrides
    (`fit_overrides` that are None are left out). The LPSConfig itself needs the networks'
    input shape, so its options come back as a dict."""
    if variant not in VARIANTS:
        raise ParamsimError(
            f"unknown variant {variant!r} of LPS; choose from {', '.join(VARIANTS)}"
        )
    cfg_kw, fit_kw = VARIANTS[variant]
    given = {k: v for k, v in fit_overrides.items() if v is not None}
    base = fit_config or FitConfig.from_dict(
        {**FitConfig().to_dict(), **VARIANT_DEFAULTS.get(variant, {})}
    )
    fit = {**base.to_dict(), **fit_kw, **given}
    return {**cfg_kw, **(config_overrides or {})}, FitConfig.from_dict(fit)


AUTHORS_MAX_INPUT = 256  # the flattened d x d Gram needs d^2 inputs per embedding unit


class LPSMethod(Method):
    """Learned parameter similarity (weights only). `variant` picks an ablation.

    `extra_zoo` (a zoo directory, e.g. digits-groups, or a list of them) adds training models;
    models whose task could be a held-out task are dropped (see
    `paramsim.lps.fit.filter_extra`), and so are models of a task with a class the training
    tasks leave out, as for the auxiliary zoo. `exclude_tasks` names tasks that must never
    train; `paramsim.eval` sets it to each split's held-out and validation tasks.
    """

    learned = True
    weights_only = True

    def __init__(
        self,
        variant: str = "lps",
        fit_config: FitConfig | None = None,
        extra_zoo: str | Sequence[str] | None = None,
        exclude_tasks: Sequence[Task] | None = None,
        **config_overrides,
    ) -> None:
        self.config_overrides, self.fit_config = variant_configs(
            variant, fit_config, config_overrides
        )
        self.name = variant
        self.variant = variant
        self.extra_zoo = extra_zoo
        self.exclude_tasks = list(exclude_tasks) if exclude_tasks is not None else None
        self.model: LPS | None = None

    def _config(self, nets: Sequence[Network]) -> LPSConfig:
        return LPSConfig(
            input_shape=tuple(nets[0].input_shape),
            n_outputs=nets[0].n_outputs,
            **self.config_overrides,
        )

    def check(self, networks: Sequence[Network]) -> str | None:
        if not networks:
            return None
        cfg = self._config(networks)
        if cfg.flat_head and cfg.input_dim > AUTHORS_MAX_INPUT:
            return (
                f"lps-authors flattens a {cfg.input_dim}^2 Gram into one linear layer; "
                f"only inputs up to {AUTHORS_MAX_INPUT} values are supported"
            )
        shapes = {tuple(n.input_shape) for n in networks}
        if len(shapes) > 1:
            return f"models have different input shapes {sorted(shapes)}"
        if not cfg.func_branch and any(n.kind != "mlp" for n in networks):
            return f"{self.name} reads MLP weights only; these models include CNNs"
        return None

    def fit(
        self,
        networks: Sequence[Network],
        tasks: Sequence[Task],
        context: Context | None = None,
        val: tuple[Sequence[Network], Sequence[Task]] | None = None,
    ) -> LPSMethod:
        fc = self.fit_config
        if context is not None:
            fc = FitConfig.from_dict({**fc.to_dict(), "seed": context.seed})
        extra_n: Sequence[Network] = ()
        extra_t: Sequence[Task] = ()
        paths = [self.extra_zoo] if isinstance(self.extra_zoo, str) else self.extra_zoo or []
        for path in paths:
            more_n, more_t = zoo_training_set(path)
            extra_n, extra_t = [*extra_n, *more_n], [*extra_t, *more_t]
        if extra_n:  # like the auxiliary zoo: no class the training tasks leave out
            from paramsim.lps.auxiliary import usable_auxiliary

            extra_n, extra_t = usable_auxiliary(extra_n, extra_t, tasks)
        probe_images = input_basis = None
        cfg = self._config(networks)
        if context is not None and context.zoo:
            reads_weights = any(n.kind == "mlp" for n in networks)
            got = zoo_material(
                context.zoo, fc, tasks, cfg.learned_probes, basis_for=cfg if reads_weights else None
            )
            extra_n, extra_t = [*extra_n, *got.networks], [*extra_t, *got.tasks]
            probe_images, input_basis = got.probe_images, got.input_basis
        if extra_n and not cfg.func_branch:
            keep = [i for i, n in enumerate(extra_n) if n.kind == "mlp"]
            extra_n = [extra_n[i] for i in keep]
            extra_t = [extra_t[i] for i in keep]
        self.model = LPS(cfg, fc).fit(
            networks,
            tasks,
            val=val,
            extra_networks=extra_n,
            extra_tasks=extra_t,
            exclude_tasks=self.exclude_tasks,
            probe_images=probe_images,
            input_basis=input_basis,
        )
        return self

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        if self.model is None:
            raise ParamsimError(f"{self.name} is not fitted; call fit on training tasks first")
        return self.model.embed(networks)

    def __deepcopy__(self, memo):
        """Copies share nothing mutable but the cached extra zoo (read-only networks)."""
        new = copy.copy(self)
        new.model = copy.deepcopy(self.model, memo)
        new.config_overrides = dict(self.config_overrides)
        return new
