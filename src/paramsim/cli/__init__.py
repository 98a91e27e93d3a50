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
    """Entry point: user errors (ours and click's usage errors) become one `error:` line on
    stderr and exit code 2, never a traceback or a screen of usage text."""
    try:
        cli.main(args=argv, prog_name="paramsim", standalone_mode=False)
    except ParamsimError as exc:
        _error(str(exc))
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a bare group (`paramsim index`): its help is the answer
        return 2
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _error(exc.format_message() + hint)
        return 2
    except click.ClickException as exc:
        _error(exc.format_message())
        return 2
    except OSError as exc:  # the file system said no: name the path and the reason
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"cannot access{where}: {exc.strerror or exc}")
        return 2
    return 0


def _error(message: str) -> None:
    """One line, whatever the message holds (click's can span lines)."""
    click.echo("error: " + " ".join(message.split()), err=True)


if __name__ == "__main__":
    sys.exit(main())
