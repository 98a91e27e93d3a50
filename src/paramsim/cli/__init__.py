"""The `paramsim` command line: a thin layer over the library.

Each `*_cmd` module in this package contributes commands through a `register(group)`
function, so stages can add commands without editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from paramsim import __version__
from paramsim.errors import ParamsimError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="paramsim")
def cli() -> None:
    """Measure how similar trained networks are from their weights alone."""


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.endswith("_cmd"):
        importlib.import_module(f"{__name__}.{_info.name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="paramsim", standalone_mode=False)
    except ParamsimError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
