"""Staff accounts, roles and sign-in sessions.

Passwords are Argon2id hashes (argon2-cffi, its default parameters, re-hashed when those change).
A sign-in is a random token in an HttpOnly, SameSite=Strict cookie, signed and time-stamped by
itsdangerous (a forged or expired cookie is refused before the database is asked); the database
keeps only the token's SHA-256, so a copy of it signs nobody in, and signing out or disabling an
account ends the session at once. Each session carries its own CSRF token (server.py).

Roles: ``viewer`` sees everything; ``reviewer`` also decides review lines and acknowledges
restocks; ``supervisor`` also puts plates in maintenance.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from ..store import Store
from ..tables import audit, staff
from .guarded import GuardedStore

log = logging.getLogger(__name__)

ROLES = ("viewer", "reviewer", "supervisor")
PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset(ROLES),
    "review": frozenset({"reviewer", "supervisor"}),
    "restock": frozenset({"reviewer", "supervisor"}),
    "maintenance": frozenset({"supervisor"}),
}
MIN_PASSWORD = 10
_FAILS_ALLOWED, _FAILS_WINDOW_S = 5, 300.0


class AccountError(ValueError):
    """A request about accounts that cannot be done as asked (one line for the user)."""


class Staff(NamedTuple):
    username: str
    role: str
    csrf: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, frozenset())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError(f"username {name!r}: 1-64 letters, digits or . _ - @")
    return name


class Accounts:
    """Accounts over cartd's database. Thread-safe: one lock around the connection."""

    def __init__(self, store: Store, ttl_s: float = 12 * 3600.0, clock: Callable[[], float] = time.time):
        self.db = GuardedStore(store)  # shared with the Desk and the page's reads (one lock)
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.hasher = PasswordHasher()
        self._fails: dict[str, deque[float]] = {}
        self._dummy = self.hasher.hash(secrets.token_hex(16))  # same cost for unknown names
        self._tx, self._read = self.db.tx, self.db.read
        self._tx(lambda: staff.put_setting_once(store, "signing_key", secrets.token_hex(32)))
        key = self._read(lambda: staff.setting(store, "signing_key"))
        self.signer = TimestampSigner(str(key), salt="gondola-console-session")

    @property
    def lock(self) -> threading.RLock:
        return self.db.lock

    def _token(self, cookie: str | None) -> str | None:
        """The sign-in token inside a cookie, or None when it is forged, expired or too long."""
        if not cookie or len(cookie) > 256:
            return None
        try:
            return self.signer.unsign(cookie, max_age=int(self.ttl_s)).decode()
        except (SignatureExpired, BadSignature):
            return None

    # -- accounts
    def add_user(self, username: str, password: str, role: str, actor: str = "cartd user add") -> bool:
        check_username(username)
        if role not in ROLES:
            raise AccountError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        h = self.hasher.hash(password)
        now = self.clock()

        def write() -> bool:
            new = staff.put_user(self.store, username, h, role, now)
            audit.add(self.store, now, actor, "user.add" if new else "user.update", username, {"role": role})
            return new
        return self._tx(write)

    def disable_user(self, username: str, actor: str = "cartd user disable") -> bool:
        now = self.clock()

        def write() -> bool:
            ok = staff.disable(self.store, username)
            if ok:
                audit.add(self.store, now, actor, "user.disable", username)
            return ok
        return self._tx(write)

    def users(self) -> list[tuple[str, str, int, float]]:
        return list(self._read(lambda: staff.users(self.store)))

    # -- sign-in
    def throttled(self, username: str) -> float:
        """Seconds until this name may try again (0: now)."""
        q = self._fails.get(username)
        now = self.clock()
        while q and q[0] < now - _FAILS_WINDOW_S:
            q.popleft()
        if q is not None and len(q) >= _FAILS_ALLOWED:
            return q[0] + _FAILS_WINDOW_S - now
        return 0.0

    def sign_in(self, username: str, password: str, remote: str) -> tuple[str, Staff] | None:
        """(cookie value, staff) or None. Every failure costs one hash verification."""
        if self.throttled(username) > 0:
            return None
        u = self._read(lambda: staff.user(self.store, username)) if len(username) <= 64 else None
        ok = False
        try:
            ok = self.hasher.verify(u.password_hash if u else self._dummy, password) and u is not None
        except (VerificationError, InvalidHashError):
            ok = False
        now = self.clock()
        if not ok or u is None or u.disabled:
            self._fails.setdefault(username[:64], deque()).append(now)
            log.warning("sign-in refused for %r from %s", username[:64], remote)
            return None
        self._fails.pop(username, None)
        if self.hasher.check_needs_rehash(u.password_hash):
            h = self.hasher.hash(password)
            self._tx(lambda: staff.set_password_hash(self.store, u.username, h))
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)

        def write() -> None:
            staff.add_session(self.store, _digest(token), u.username, csrf, now, now + self.ttl_s)
            audit.add(self.store, now, u.username, "sign_in", remote)
        self._tx(write)
        return self.signer.sign(token).decode(), Staff(u.username, u.role, csrf)

    def session(self, cookie: str | None) -> Staff | None:
        token = self._token(cookie)
        if token is None:
            return None
        now = self.clock()

        def read() -> Staff | None:
            s = staff.session(self.store, _digest(token), now)
            if s is None:
                return None
            u = staff.user(self.store, s.username)
            if u is None or u.disabled:
                return None
            return Staff(u.username, u.role, s.csrf)
        return self._read(read)

    def sign_out(self, cookie: str | None, who: str) -> None:
        token = self._token(cookie)
        if token is None:
            return
        now = self.clock()

        def write() -> None:
            staff.end_session(self.store, _digest(token))
            audit.add(self.store, now, who, "sign_out")
        self._tx(write)

    def proxy_user(self, username: str) -> Staff | None:
        """The account a trusted SSO proxy vouched for (server.py checks the proxy's address)."""
        u = self._read(lambda: staff.user(self.store, username[:64]))
        if u is None or u.disabled:
            return None
        return Staff(u.username, u.role, "")
