"""`paramsim compare A B`: the similarity of two checkpoints by one method."""

from __future__ import annotations

import json
from pathlib import Path

import click

from paramsim.errors import ParamsimError


def parse_spec(text: str | None):
    """An ArchSpec from a JSON string or a file holding one (None passes through)."""
    if text is None:
        return None
    from paramsim.weights.arch import ArchSpec

    path = Path(text)
    if not text.lstrip().startswith("{"):
        if not path.is_file():
            raise ParamsimError(f"--spec {text!r} is neither a JSON object nor a file")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsimError(f"--spec is not valid JSON: {exc}") from exc
    return ArchSpec.from_json(data)


def compare(a: str, b: str, method: str = "chain", spec: str | None = None) -> float:
    """Similarity of checkpoints `a` and `b` (larger is more alike)."""
    from paramsim.features import Context, get_method
    from paramsim.weights import load

    m = get_method(method)
    if not m.weights_only:
        raise ParamsimError(f"method {method} needs a dataset; compare runs weights-only methods")
    arch = parse_spec(spec)
    nets = [load(a, arch), load(b, arch)]
    return float(m.similarity(nets, Context())[0, 1]) + 0.0  # no -0.0


def register(cli: click.Group) -> None:
    from paramsim.features import FIXED_METHODS

    @cli.command("compare")
    @click.argument("a", type=click.Path(dir_okay=False))
    @click.argument("b", type=click.Path(dir_okay=False))
    @click.option(
        "--method",
        "-m",
        default="chain",
        show_default=True,
        type=click.Choice(FIXED_METHODS),
        help="Fixed similarity method (see docs: features).",
    )
    @click.option(
        "--spec",
        default=None,
        help="Architecture as ArchSpec JSON or a file holding it (needed for CNN state_dicts).",
    )
    @click.option("--model", "model_dir", default=None, help="A saved LPS model (paramsim fit).")
    @click.option("--zoo", default=None, help="With --model: print the zoo tasks nearest to each.")
    def compare_cmd(
        a: str, b: str, method: str, spec: str | None, model_dir: str | None, zoo: str | None
    ) -> None:
        """Print how similar checkpoints A and B are (.safetensors, .pt or .pth)."""
        if model_dir is None:
            if zoo:
                raise ParamsimError("--zoo needs --model (a saved LPS model)")
            click.echo(f"{compare(a, b, method, spec):.6f}")
            return
        from paramsim.cli.lps_cmd import compare_with_model

        score, near = compare_with_model(a, b, model_dir, parse_spec(spec), zoo)
        click.echo(f"{score:.6f}")
        for name, rows in zip((a, b), near or [], strict=False):
            tasks = ", ".join(f"{t} ({s:.3f})" for t, s in rows)
            click.echo(f"nearest tasks to {name}: {tasks}")
