"""``cartd``: the store's cart aggregator.

Exit codes (sysexits): 0 ok, 64 usage, 69 storage unavailable, 70 internal fault, 78 config.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from . import __version__

EX_USAGE, EX_UNAVAILABLE, EX_SOFTWARE, EX_CONFIG = 64, 69, 70, 78
log = logging.getLogger("cartd")


def _load(config: Path):
    from .catalogue import Catalogue
    from .config import ConfigError, load_config
    try:
        cfg = load_config(config)
        cat = Catalogue.load(cfg.catalogue, cfg.receipts.currency)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line if line.startswith(str(config)) or line.startswith("/") else f"{config}: {line}", err=True)
        sys.exit(EX_CONFIG)
    return cfg, cat


def _storage_error(cfg, exc: Exception) -> None:
    where = getattr(cfg.storage, "path", None) or getattr(cfg.storage, "dsn", "")
    click.echo(f"cartd: cannot open storage {cfg.storage.type} {where}: {str(exc).splitlines()[0] if str(exc) else exc}", err=True)
    sys.exit(EX_UNAVAILABLE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cartd")
def cli() -> None:
    """Gondola cart aggregator: item events + gates + tracking → carts → receipts.

    \b
      cartd check    --config cartd.yaml     validate config and catalogue
      cartd run      --config cartd.yaml     the service
      cartd receipts --config cartd.yaml     stored receipts, one JSON per line
    """


@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
def check(config: Path) -> None:
    """Validate the config and the catalogue (exit 0, or 78 with one line per problem)."""
    cfg, cat = _load(config)
    click.echo(f"{config}: ok (store {cfg.store_id}, {cfg.storage.type} storage, {len(cat)} catalogue items, "
               f"{len(cfg.units)} units)")


@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config: Path, log_level: str) -> None:
    """Run the aggregator in the foreground (SIGTERM/SIGINT stop it cleanly)."""
    stopping: list[object] = []
    # Installed first: a SIGTERM during start-up still means a clean stop, not a kill.
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, cat = _load(config)
    from .service import Service
    try:
        svc = Service(cfg, cat)
    except Exception as exc:  # database unreachable, unwritable path, ...
        _storage_error(cfg, exc)
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    signal.signal(signal.SIGINT, lambda *_: svc.stop())
    if stopping:
        svc.stop()
    log.info("cartd %s for store %s (%s), instance %s", __version__, cfg.store_id, cfg.storage.type, cfg.instance_id)
    try:
        svc.run()
    except Exception:
        log.exception("cartd failed")
        sys.exit(EX_SOFTWARE)


@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
@click.option("--session", default=None, help="only this session's receipts")
def receipts(config: Path, session: str | None) -> None:
    """Print stored receipts (and corrections), oldest first, one JSON document per line."""
    cfg, _ = _load(config)
    from .store import open_store
    try:
        store = open_store(cfg.storage, readonly=True)
        sql = "SELECT payload FROM receipts" + (" WHERE session_id=?" if session else "") + " ORDER BY issued_at, n"
        rows = store.q(sql, (session,) if session else ())
    except Exception as exc:
        _storage_error(cfg, exc)
    for (p,) in rows:
        click.echo(p)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"cartd: {exc.format_message()}", err=True)
        sys.exit(EX_USAGE)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    sys.exit(0)


if __name__ == "__main__":
    main()
