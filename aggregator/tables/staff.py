"""``staff_users`` (local accounts: ``cartd user add``), ``staff_sessions`` (sign-ins; the table
keeps only the SHA-256 of the cookie's token, so a copy of the database signs nobody in) and
``console_settings`` (the console's signing key)."""
from __future__ import annotations

from typing import NamedTuple

from ..store import Store


class User(NamedTuple):
    username: str
    password_hash: str
    role: str
    disabled: int


def user(store: Store, username: str) -> User | None:
    row = store.q1("SELECT username, password_hash, role, disabled FROM staff_users WHERE username=?", (username,))
    return User(*row) if row else None


def users(store: Store) -> list[tuple[str, str, int, float]]:
    """(username, role, disabled, created_at), by name."""
    return store.q("SELECT username, role, disabled, created_at FROM staff_users ORDER BY username")


def put_user(store: Store, username: str, password_hash: str, role: str, now: float) -> bool:
    """Create or replace an account; True when it is new."""
    new = user(store, username) is None
    store.ex("INSERT INTO staff_users (username, password_hash, role, created_at, disabled) VALUES (?,?,?,?,0)"
             " ON CONFLICT (username) DO UPDATE SET password_hash=excluded.password_hash, role=excluded.role,"
             " disabled=0", (username, password_hash, role, now))
    return new


def set_password_hash(store: Store, username: str, password_hash: str) -> None:
    store.ex("UPDATE staff_users SET password_hash=? WHERE username=?", (password_hash, username))


def disable(store: Store, username: str) -> bool:
    cur = store.ex("UPDATE staff_users SET disabled=1 WHERE username=?", (username,))
    store.ex("DELETE FROM staff_sessions WHERE username=?", (username,))
    return bool(cur.rowcount)


class SignIn(NamedTuple):
    username: str
    csrf: str
    expires_at: float


def add_session(store: Store, token_sha256: str, username: str, csrf: str, now: float, expires_at: float) -> None:
    store.ex("DELETE FROM staff_sessions WHERE expires_at < ?", (now,))
    store.ex("INSERT INTO staff_sessions (token_sha256, username, csrf, created_at, expires_at) VALUES (?,?,?,?,?)",
             (token_sha256, username, csrf, now, expires_at))


def session(store: Store, token_sha256: str, now: float) -> SignIn | None:
    row = store.q1("SELECT username, csrf, expires_at FROM staff_sessions WHERE token_sha256=? AND expires_at >= ?",
                   (token_sha256, now))
    return SignIn(*row) if row else None


def end_session(store: Store, token_sha256: str) -> None:
    store.ex("DELETE FROM staff_sessions WHERE token_sha256=?", (token_sha256,))


def setting(store: Store, name: str) -> str | None:
    row = store.q1("SELECT value FROM console_settings WHERE name=?", (name,))
    return row[0] if row else None


def put_setting_once(store: Store, name: str, value: str) -> None:
    store.ex("INSERT INTO console_settings (name, value) VALUES (?,?) ON CONFLICT (name) DO NOTHING", (name, value))
