"""``cartd broker-config``: the store broker's identities and ACL, as a Mosquitto configuration.

Writes into one folder:

- ``mosquitto.conf``: a listener, ``allow_anonymous false``, the password and ACL files, a
  persistent store for cartd's MQTT 5 session; ``mosquitto -c DIR/mosquitto.conf`` runs it as is;
- ``passwd``: one PBKDF2-SHA512 hash per identity, in the format ``mosquitto_passwd`` writes
  (``$7$<iterations>$<salt>$<hash>``), computed here so no password ever appears on a command line;
- ``acl``: per identity, exactly the topics it may write and read (see ``acl_rules``);
- ``credentials/<identity>.json`` = ``{"username", "password"}`` (mode 0600) for every unit id,
  ``cartd`` and ``backend``, and the bare password beside it as ``<identity>.password`` (0600)
  for configs that name a ``password_file``.

Run it again with more units to add them: identities that already have a credentials file keep
their password (``--rotate ID`` gives one a new password).

The rules (``{base}`` = ``{prefix}/{store}``):

- a unit publishes only ``{base}/{unit}/events|status|health|state`` and ``{base}/{unit}/res/#``
  (its last will is its own ``status``), and reads only ``{base}/{unit}/req/#``;
- ``backend`` (the store's back-end, gate and tracking system) reads the whole store and is the
  only identity that may publish any ``req/`` command (tare, rezero, maintenance, ...), gates and
  tracking;
- ``cartd`` reads events, status, health, replies and ``_store/...``, publishes receipts and its own
  status/health/dead letters, and of the requests only the two harmless ones it needs:
  ``req/resend`` (a seq gap) and ``req/rebirth`` (fresh retained health);
- ``console`` (the staff console, docs/console.md) reads events, status, health, state, the
  replies to maintenance and ``_store/...``, and publishes only ``req/maintenance``;
- anonymous clients are refused; a client's will is subject to the same ACL as its publishes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.atomicfile import atomic_write

RESERVED = ("cartd", "backend", "console")
# Mosquitto's own tool uses 101 iterations; the passwords here are 256-bit random, so stretching
# barely matters, but a few more rounds cost nothing at connect time.
PBKDF2_ITERATIONS = 1000
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BrokerConfigError(ValueError):
    """Bad input: the message is one line for the person who typed the command."""


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto 2 password-file hash: ``$7$iterations$base64(salt)$base64(pbkdf2-sha512)``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_name(kind: str, value: str) -> str:
    if not _IDENT.match(value or ""):
        raise BrokerConfigError(f"{kind} {value!r}: use 1..64 letters, digits, '.', '_' or '-', "
                                f"starting with a letter or digit")
    return value


def check_prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+# \t\n"):
        raise BrokerConfigError(f"--prefix {prefix!r}: a plain topic path without wildcards, spaces or edge slashes")
    return prefix


def parse_units(text: str) -> list[str]:
    units = [u.strip() for u in (text or "").split(",") if u.strip()]
    if not units:
        raise BrokerConfigError("--units: name at least one unit id, e.g. --units unit-a,unit-b")
    seen: set[str] = set()
    for u in units:
        check_name("unit id", u)
        if u in RESERVED:
            raise BrokerConfigError(f"unit id {u!r} is reserved for the {u} identity; name the unit differently")
        if u in seen:
            raise BrokerConfigError(f"unit id {u!r} is listed twice")
        seen.add(u)
    return units


def acl_rules(prefix: str, store: str, units: list[str]) -> dict[str, list[tuple[str, str]]]:
    """identity → [(access, topic filter)], the ACL in one place (the docs and tests read it)."""
    b = f"{prefix}/{store}"
    rules: dict[str, list[tuple[str, str]]] = {}
    for u in units:
        rules[u] = [("write", f"{b}/{u}/{k}") for k in ("events", "status", "health", "state")]
        rules[u] += [("write", f"{b}/{u}/res/#"), ("read", f"{b}/{u}/req/#")]
    rules["cartd"] = [
        ("read", f"{b}/+/events"), ("read", f"{b}/+/status"), ("read", f"{b}/+/health"),
        ("read", f"{b}/+/res/#"), ("read", f"{b}/_store/#"),
        ("write", f"{b}/+/req/resend"), ("write", f"{b}/+/req/rebirth"),
        ("write", f"{b}/_store/receipts/+"), ("write", f"{b}/_store/cartd/#"),
    ]
    # The staff console reads what it shows and may send a unit one command: maintenance.
    rules["console"] = [
        ("read", f"{b}/+/events"), ("read", f"{b}/+/status"), ("read", f"{b}/+/health"), ("read", f"{b}/+/state"),
        ("read", f"{b}/+/res/maintenance"), ("read", f"{b}/_store/#"),
        ("write", f"{b}/+/req/maintenance"),
    ]
    rules["backend"] = [
        ("read", f"{b}/#"),
        ("write", f"{b}/+/req/#"), ("write", f"{b}/_store/gates/+"), ("write", f"{b}/_store/tracking"),
    ]
    return rules


@dataclass
class Tls:
    cafile: Path
    certfile: Path
    keyfile: Path
    client_certs: bool = False  # require a client certificate; its CN is the identity


@dataclass
class Result:
    out: Path
    identities: list[str]
    new: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    broker_user: str | None = None


def _read_credentials(path: Path, identity: str) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pw = doc.get("password") if isinstance(doc, dict) else None
    if doc.get("username") != identity or not isinstance(pw, str) or len(pw) < 16:
        return None
    return pw


def _private(mode: int) -> Callable[[str], None]:
    return lambda tmp: os.chmod(tmp, mode)


def write_broker_config(out: Path, *, units: list[str], store: str, prefix: str = "gondola/v1",
                        port: int = 1883, bind: str | None = None, run_as: str | None = None,
                        tls: Tls | None = None, rotate: tuple[str, ...] = (),
                        max_packet_size: int = 1048576) -> Result:
    check_name("store id", store)
    check_prefix(prefix)
    if not 1 <= port <= 65535:
        raise BrokerConfigError(f"--port {port}: must be 1..65535")
    if bind is not None and (not bind or any(c.isspace() for c in bind)):
        raise BrokerConfigError(f"--bind {bind!r}: an address or host name")
    if run_as is not None and (not run_as or any(c.isspace() for c in run_as)):
        raise BrokerConfigError(f"--user {run_as!r}: a user name")
    identities = [*units, *RESERVED]
    for r in rotate:
        if r not in identities:
            raise BrokerConfigError(f"--rotate {r!r}: not one of the identities ({', '.join(identities)})")
    if tls is not None:
        for what, p in (("--tls-ca", tls.cafile), ("--tls-cert", tls.certfile), ("--tls-key", tls.keyfile)):
            if not p.is_file():
                raise BrokerConfigError(f"{what} {p}: no such file")
    out = out.resolve()
    creds_dir = out / "credentials"
    (out / "data").mkdir(parents=True, exist_ok=True)
    creds_dir.mkdir(exist_ok=True)
    os.chmod(creds_dir, 0o700)
    res = Result(out, identities)
    passwords: dict[str, str] = {}
    for ident in identities:
        cred = creds_dir / f"{ident}.json"
        pw = None if ident in rotate else _read_credentials(cred, ident)
        if pw is None:
            pw = secrets.token_urlsafe(32)  # 256 bits
            res.new.append(ident)
        else:
            res.kept.append(ident)
        passwords[ident] = pw
        atomic_write(cred, json.dumps({"username": ident, "password": pw}) + "\n", before_replace=_private(0o600))
        atomic_write(creds_dir / f"{ident}.password", pw + "\n", before_replace=_private(0o600))
    # The broker reads these two after dropping to its run-as user: readable by it, not by others.
    atomic_write(out / "passwd", "".join(f"{i}:{hash_password(passwords[i])}\n" for i in identities),
                 before_replace=_private(0o640))
    rules = acl_rules(prefix, store, units)
    acl = [f"# Gondola store {store}: written by `cartd broker-config`; identities = usernames.",
           "# No rule outside a `user` block: anonymous clients (refused anyway) get nothing.", ""]
    for ident in identities:
        acl.append(f"user {ident}")
        acl += [f"topic {access} {topic}" for access, topic in rules[ident]]
        acl.append("")
    atomic_write(out / "acl", "\n".join(acl), before_replace=_private(0o640))
    conf = [
        f"# Mosquitto 2 for Gondola store {store}: written by `cartd broker-config`.",
        f"# Run: mosquitto -c {out / 'mosquitto.conf'}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "",
        f"listener {port}{' ' + bind if bind else ''}",
    ]
    if tls is not None:
        conf += [f"cafile {tls.cafile.resolve()}", f"certfile {tls.certfile.resolve()}",
                 f"keyfile {tls.keyfile.resolve()}", "tls_version tlsv1.2"]
        if tls.client_certs:
            # The certificate's CN is the identity (same names as the password file, same ACL).
            conf += ["require_certificate true", "use_identity_as_username true"]
    conf += [
        "",
        "# cartd keeps an MQTT 5 persistent session: keep it (and its queue) across broker restarts.",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "max_queued_messages 100000",
        "# Nothing Gondola sends comes near this; a bigger packet disconnects its sender.",
        f"max_packet_size {max_packet_size}",
        "log_dest stderr",
    ]
    if run_as:
        conf.append(f"user {run_as}")
    atomic_write(out / "mosquitto.conf", "\n".join(conf) + "\n", before_replace=_private(0o644))
    res.broker_user = _hand_to_broker_user(out, run_as)
    return res


def _hand_to_broker_user(out: Path, run_as: str | None) -> str | None:
    """Started as root, Mosquitto drops to ``user`` (default ``mosquitto``) before it reads the
    password and ACL files and writes its persistence: give that user's group read access to the
    two files and the user the data folder. Returns the user, or None when nothing was needed."""
    if os.geteuid() != 0:
        return None  # Mosquitto started by this user stays this user
    name = run_as or "mosquitto"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return None
    for f in ("passwd", "acl"):
        os.chown(out / f, 0, pw.pw_gid)
    os.chown(out / "data", pw.pw_uid, pw.pw_gid)
    return name
