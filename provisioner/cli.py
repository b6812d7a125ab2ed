"""The `provision` command: stages validate -> refresh -> plan -> render -> confirm -> apply.

This module is the only one that prints and the only one that exits. A user mistake ends in
one clear message and exit code 1, never a traceback. Click is used for parsing because it
gives interspersed options, typed flags and help text for free.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from provisioner.errors import ManifestError, ProvisionerError

F = TypeVar("F", bound=Callable[..., Any])


def _parse_vars(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--var")
        out[name] = value
    return out


def template_options(f: F) -> F:
    """--var / --var-file: Jinja2 variables for manifest rendering."""
    f = click.option("--var", "var", multiple=True, metavar="NAME=VALUE", help="Template variable.")(f)
    f = click.option(
        "--var-file",
        "var_files",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML or JSON file of template variables.",
    )(f)
    return f


def backend_options(f: F) -> F:
    """--backend / --endpoint / --region / --qps: where the KMS is and how fast to call it."""
    f = click.option(
        "--backend", type=click.Choice(["local", "alibaba"]), default=None, help="KMS backend."
    )(f)
    f = click.option("--endpoint", default=None, help="KMS endpoint: http://host:port, https://host or host.")(f)
    f = click.option("--region", default=None, help="Alibaba Cloud region id, e.g. cn-hangzhou.")(f)
    f = click.option(
        "--qps", multiple=True, metavar="GROUP=N", help="Client-side rate limit per quota group."
    )(f)
    return f


def color_option(f: F) -> F:
    return click.option("--no-color", is_flag=True, default=False, help="Plain text output.")(f)


def use_color(no_color: bool) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def handle_errors(f: F) -> F:
    """Turn the provisioner's errors into one message on stderr and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ManifestError as e:
            for d in e.diagnostics:
                click.echo(str(d), err=True)
            _fail(f"{sum(1 for d in e.diagnostics if d.severity == 'error')} error(s)")
        except ProvisionerError as e:
            _fail(f"error: {e}")

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="byok-provisioner")
def cli() -> None:
    """Declarative provisioner for Alibaba Cloud KMS keys with imported (BYOK) material."""


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: click's usage errors exit 1, like every other user mistake."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as e:
        e.show()
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
