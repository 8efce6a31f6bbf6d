"""``cartd``: the store's cart aggregator.

Exit codes (sysexits): 0 ok, 64 usage, 66 config (or catalogue) file missing or unreadable, 69
storage unavailable, 70 internal fault, 73 cannot write (broker-config), 78 config (or a database
written by a newer cartd).
"""
from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from daemon.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE

from . import __version__

if TYPE_CHECKING:
    from .catalogue import Catalogue
    from .config import Config
    from .store import Store

log = logging.getLogger("cartd")


def _load(config: Path) -> tuple[Config, Catalogue]:
    from daemon.config import ConfigError

    from .catalogue import Catalogue
    from .config import load_config
    try:
        cfg = load_config(config)
        cat = Catalogue.load(cfg.catalogue, cfg.receipts.currency)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line if line.startswith(str(config)) or line.startswith("/") else f"{config}: {line}", err=True)
        sys.exit(exc.exit_code)  # 78, or 66 when a file cannot be read
    return cfg, cat


def _storage_error(cfg: Config, exc: Exception) -> None:
    where = getattr(cfg.storage, "path", None) or getattr(cfg.storage, "dsn", "")
    click.echo(
        f"cartd: cannot open storage {cfg.storage.type} {where}: {str(exc).splitlines()[0] if str(exc) else exc}",
        err=True,
    )
    sys.exit(EX_UNAVAILABLE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cartd")
def cli() -> None:
    """Gondola cart aggregator: item events + gates + tracking → carts → receipts.

    \b
      cartd check    --config cartd.yaml     validate config and catalogue
      cartd run      --config cartd.yaml     the service
      cartd receipts --config cartd.yaml     stored receipts, one JSON per line
      cartd broker-config --units a,b --out DIR   broker identities and ACL (Mosquitto)
      cartd user add NAME --config cartd.yaml --role reviewer   a staff console account
      cartd review list|decide --config cartd.yaml              the review queue
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
    from .schema import SchemaTooNew
    from .service import Service
    try:
        svc = Service(cfg, cat)
    except SchemaTooNew as exc:  # written by a newer cartd: never half understood
        click.echo(f"cartd: {exc}", err=True)
        sys.exit(EX_CONFIG)
    except Exception as exc:  # noqa: BLE001 - database unreachable, unwritable path, ...: one line, not a traceback
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
    from .tables import receipts as receipts_t
    try:
        store = open_store(cfg.storage, readonly=True)
        payloads = receipts_t.stored(store, session)
    except Exception as exc:  # noqa: BLE001 - any storage fault: one line, not a traceback
        _storage_error(cfg, exc)
    for p in payloads:
        click.echo(p)


@contextmanager
def _database(config: Path) -> Iterator[tuple[Config, Catalogue, Store]]:
    """(config, catalogue, cartd's database) for a one-off command; the database is closed after."""
    cfg, cat = _load(config)
    store = _writable_store(cfg)
    try:
        yield cfg, cat, store
    finally:
        store.close()


def _writable_store(cfg: Config) -> Store:
    """cartd's database for a one-off write (accounts, decisions): migrated as `cartd run` would."""
    from .schema import SchemaTooNew
    from .store import open_store
    try:
        store = open_store(cfg.storage)
        store.migrate()
    except SchemaTooNew as exc:
        click.echo(f"cartd: {exc}", err=True)
        sys.exit(EX_CONFIG)
    except Exception as exc:  # noqa: BLE001 - unreachable or unwritable storage: one line
        _storage_error(cfg, exc)
    return store


@cli.group()
def user() -> None:
    """Staff console accounts (kept in cartd's database): add, list, disable."""


@user.command("add")
@click.argument("username")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
@click.option("--role", type=click.Choice(["viewer", "reviewer", "supervisor"]), default="reviewer", show_default=True,
              help="viewer: sees; reviewer: also decides reviews and restocks; supervisor: also maintenance")
@click.option("--password-file", type=click.Path(path_type=Path), default=None,
              help="read the password from this file (first line); otherwise asked on the terminal")
def user_add(username: str, config: Path, role: str, password_file: Path | None) -> None:
    """Create (or reset) a console account. Exit 64 when no password can be had."""
    from .console.accounts import AccountError, Accounts
    cfg, _ = _load(config)
    if password_file is not None:
        try:
            password = next(iter(password_file.read_text().splitlines()), "")  # the first line
        except OSError as exc:
            click.echo(f"cartd user add: cannot read {password_file}: {exc.strerror}", err=True)
            sys.exit(EX_NOINPUT)
    elif sys.stdin.isatty():
        password = click.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
    else:
        click.echo("cartd user add: no terminal to ask for the password: pass --password-file FILE", err=True)
        sys.exit(EX_USAGE)
    store = _writable_store(cfg)
    try:
        new = Accounts(store).add_user(username, password, role)
    except AccountError as exc:
        click.echo(f"cartd user add: {exc}", err=True)
        sys.exit(EX_USAGE)
    finally:
        store.close()
    click.echo(f"{'added' if new else 'updated'} {username} ({role})")


@user.command("list")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
def user_list(config: Path) -> None:
    """Accounts, one per line: name, role, enabled or disabled."""
    from .console.accounts import Accounts
    with _database(config) as (_cfg, _cat, store):
        for name, role, disabled, _created in Accounts(store).users():
            click.echo(f"{name}\t{role}\t{'disabled' if disabled else 'enabled'}")


@user.command("disable")
@click.argument("username")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
def user_disable(username: str, config: Path) -> None:
    """Disable an account and end its sign-ins at once (exit 65 when there is no such account)."""
    from .console.accounts import Accounts
    with _database(config) as (_cfg, _cat, store):
        ok = Accounts(store).disable_user(username)
    if not ok:
        click.echo(f"cartd user disable: no account {username!r}", err=True)
        sys.exit(EX_DATAERR)
    click.echo(f"disabled {username}")


@cli.group()
def review() -> None:
    """The review queue from the command line: list it, decide a line."""


@review.command("list")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
def review_list(config: Path) -> None:
    """Lines awaiting review, one JSON document per line (with their evidence)."""
    import json

    from .views import Views
    with _database(config) as (cfg, cat, store):
        for item in Views(cfg, store, cat).review_queue(limit=100000):
            click.echo(json.dumps(item, default=str))


@review.command("decide")
@click.argument("line_id", type=int)
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
@click.option("--by", "actor", required=True, help="who decides (a console account name)")
@click.option("--accept", "action", flag_value="accept", help="the line is right as it is")
@click.option("--remove", "action", flag_value="remove", help="the line should not be on any receipt")
@click.option("--product", "sku", default=None, help="the product was this SKU")
@click.option("--quantity", type=int, default=None, help="with --product: how many")
@click.option("--shopper", "session_id", default=None, help="the line belongs to this session")
def review_decide(line_id: int, config: Path, actor: str, action: str | None, sku: str | None,
                  quantity: int | None, session_id: str | None) -> None:
    """Queue a decision for cartd (applied on its next tick; a receipt already sent is corrected)."""
    from .console.accounts import Accounts, Staff
    from .console.desk import Desk, DeskError
    chosen = [a for a in (action, "product" if sku else None, "shopper" if session_id else None) if a]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --accept, --remove, --product SKU, --shopper SESSION")
    with _database(config) as (_cfg, cat, store):
        acc = Accounts(store)
        u = acc.proxy_user(actor)
        if u is None or not u.may("review"):
            click.echo(f"cartd review decide: {actor!r} is not an enabled account allowed to review", err=True)
            sys.exit(EX_USAGE)
        body = {"action": chosen[0], "sku": sku, "quantity": quantity, "session_id": session_id}
        try:
            did = Desk(acc.db, cat).decide(Staff(u.username, u.role, ""), line_id, body)
        except DeskError as exc:
            click.echo(f"cartd review decide: {exc}", err=True)
            sys.exit(EX_DATAERR)
    click.echo(f"decision {did} queued for line {line_id}")


@cli.command("broker-config")
@click.option("--units", required=True, help="the store's unit ids, comma-separated (each is also its username)")
@click.option("--store", default="store-1", show_default=True, help="store id")
@click.option("--prefix", default="gondola/v1", show_default=True, help="topic prefix")
@click.option("--port", default=1883, show_default=True, type=int, help="listener port")
@click.option("--bind", default=None, help="listener address (default: all interfaces)")
@click.option("--user", "run_as", default=None, help="user Mosquitto runs as when started as root (default mosquitto)")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None, help="CA file: the listener speaks TLS")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="the broker's certificate")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="the broker's key")
@click.option("--client-certs", is_flag=True, help="TLS: require client certificates; the CN is the identity")
@click.option("--rotate", multiple=True, help="give this identity a new password (repeatable)")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="folder to write")
def broker_config(units: str, store: str, prefix: str, port: int, bind: str | None, run_as: str | None,
                  tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None, client_certs: bool,
                  rotate: tuple[str, ...], out: Path) -> None:
    """Write a Mosquitto set-up: per-unit, cartd and backend identities, their ACL, credentials.

    \b
    DIR/mosquitto.conf          `mosquitto -c DIR/mosquitto.conf` runs it as is
    DIR/passwd, DIR/acl         password hashes and the ACL (docs/broker-security.md)
    DIR/credentials/ID.json     {"username", "password"} per identity (0600), and ID.password
    Run again with more units to add them: existing identities keep their passwords.
    """
    from .brokerconfig import BrokerConfigError, Tls, parse_units, write_broker_config
    try:
        unit_ids = parse_units(units)
        tls = None
        if any((tls_ca, tls_cert, tls_key)):
            if tls_ca is None or tls_cert is None or tls_key is None:
                raise BrokerConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
            tls = Tls(tls_ca, tls_cert, tls_key, client_certs)
        elif client_certs:
            raise BrokerConfigError("--client-certs needs --tls-ca, --tls-cert and --tls-key")
        res = write_broker_config(out, units=unit_ids, store=store, prefix=prefix, port=port, bind=bind,
                                  run_as=run_as, tls=tls, rotate=rotate)
    except BrokerConfigError as exc:
        click.echo(f"cartd broker-config: {exc}", err=True)
        sys.exit(EX_USAGE)
    except OSError as exc:
        click.echo(f"cartd broker-config: cannot write {exc.filename or out}: {exc.strerror or exc}", err=True)
        sys.exit(EX_CANTCREAT)
    where = f"{bind or '*'}:{port}{' (TLS)' if tls else ''}"
    click.echo(f"{res.out}: Mosquitto for store {store}, listener {where}; identities "
               f"{', '.join(res.identities)} (new passwords: {', '.join(res.new) or 'none'}; "
               f"kept: {', '.join(res.kept) or 'none'})")
    if res.broker_user:
        click.echo(f"{res.out}: passwd and acl readable by group of '{res.broker_user}', data/ owned by it "
                   f"(Mosquitto started as root runs as that user)")
    click.echo(f"run: mosquitto -c {res.out / 'mosquitto.conf'}")


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
