"""The entry wrapper of every click command line (shelfd, shelfcal): one-line errors, sysexits codes.

``standalone_mode=False`` so click's own handling does not print tracebacks or exit 2: a usage
error is one line ``PROG: message`` and exit 64; a bare invocation prints the help and exits 0.
"""
from __future__ import annotations

import sys

import click

from .exitcodes import EX_INTERRUPTED, EX_OK, EX_USAGE


def run_click(group: click.Group, prog: str, *, errors: tuple[type[Exception], ...] = (),
              interrupted: str | None = None, aborted: str | None = None) -> None:
    """Run ``group`` and turn what escapes it into one line on stderr and an exit code.

    ``errors``: exception types carrying ``code`` (printed as ``PROG: message``). ``interrupted``
    and ``aborted``: a line after Ctrl-C outside click / a click Abort (nothing printed when None);
    both exit 130.
    """
    try:
        group.main(standalone_mode=False)
    except errors as exc:
        click.echo(f"{prog}: {exc}", err=True)
        sys.exit(getattr(exc, "code", 1))
    except KeyboardInterrupt:
        if interrupted is not None:
            click.echo(f"\n{prog}: {interrupted}", err=True)
        sys.exit(EX_INTERRUPTED)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(EX_OK)
    except click.UsageError as exc:
        click.echo(f"{prog}: {exc.format_message()}", err=True)
        sys.exit(EX_USAGE)
    except click.Abort:
        if aborted is not None:
            click.echo(f"\n{prog}: {aborted}", err=True)
        sys.exit(EX_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
