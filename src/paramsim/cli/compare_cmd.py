"""`paramsim compare A B`: the similarity of two checkpoints by fixed methods or an LPS model."""

from __future__ import annotations

import click

from paramsim.cli.common import compute_options, methods_option, set_seed, set_threads
from paramsim.errors import ParamsimError

DEFAULT_METHOD = "chain"


def register(cli: click.Group) -> None:
    from paramsim.methods import PAIR_METHODS

    @cli.command("compare")
    @click.argument("a", type=click.Path(dir_okay=False))
    @click.argument("b", type=click.Path(dir_okay=False))
    @methods_option(
        f"Comma list of fixed, weights-only methods (default {DEFAULT_METHOD}; "
        f"from {', '.join(PAIR_METHODS)}: the fixed methods that need neither data nor a "
        "set). One method prints one number; several print a line per method."
    )
    @click.option(
        "--spec",
        default=None,
        help="Architecture as ArchSpec JSON or a file holding it (needed for CNN state_dicts).",
    )
    @click.option("--model", "model_dir", default=None, help="A saved LPS model (paramsim fit).")
    @click.option("--zoo", default=None, help="With --model: print the zoo tasks nearest to each.")
    @compute_options()
    def compare_cmd(
        a: str,
        b: str,
        methods: str | None,
        spec: str | None,
        model_dir: str | None,
        zoo: str | None,
        seed: int,
        threads: int | None,
        quiet: bool,
    ) -> None:
        """Print how similar checkpoints A and B are (.safetensors, .pt or .pth)."""
        from paramsim.use.compare import compare_with_model, similarities, spec_from_text

        set_threads(threads)
        set_seed(seed)
        arch = spec_from_text(spec)
        if model_dir is None:
            if zoo:
                raise ParamsimError("--zoo needs --model (a saved LPS model)")
            names = _method_names(methods or DEFAULT_METHOD, PAIR_METHODS)
            scores = similarities(a, b, names, arch)
            if len(names) == 1:
                click.echo(f"{scores[names[0]]:.6f}")
            else:
                for name, score in scores.items():
                    click.echo(f"{name:<8} {score:.6f}")
            return
        if methods is not None:
            raise ParamsimError(
                "--model compares with the saved LPS model and --methods with fixed methods; "
                "give one of them"
            )
        score, near = compare_with_model(a, b, model_dir, arch, zoo)
        click.echo(f"{score:.6f}")
        for name, rows in zip((a, b), near or [], strict=False):
            tasks = ", ".join(f"{t} ({s:.3f})" for t, s in rows)
            click.echo(f"nearest tasks to {name}: {tasks}")


def _method_names(text: str, known: list[str]) -> list[str]:
    """A comma list of known fixed methods, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ParamsimError("--methods is empty; give a comma list such as chain,gram1")
    unknown = [n for n in names if n not in known]
    from paramsim.methods import FIXED_METHODS

    not_pairwise = [n for n in unknown if n in FIXED_METHODS]
    if not_pairwise:
        raise ParamsimError(
            f"{', '.join(not_pairwise)} needs real data or a set of models, not two "
            f"checkpoints; compare takes {', '.join(known)} (use `paramsim eval` on a zoo)"
        )
    if unknown:
        raise ParamsimError(
            f"unknown method {', '.join(map(repr, unknown))} for compare; choose from "
            f"{', '.join(known)} (learned ones: --model DIR)"
        )
    if len(set(names)) != len(names):
        raise ParamsimError("a method is named twice in --methods")
    return names
