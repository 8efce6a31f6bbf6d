"""cartd's database as the console's threads share it: one connection, one lock, and the two ways
to use it. A write is one transaction (rolled back on any error); a read ends the transaction
PostgreSQL opened for it, so no snapshot is held between requests."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from ..store import Store

T = TypeVar("T")


class GuardedStore:
    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.RLock()

    def tx(self, fn: Callable[[], T]) -> T:
        with self.lock:
            self.store.begin()
            try:
                out = fn()
                self.store.commit()
                return out
            except BaseException:
                self.store.rollback()
                raise

    def read(self, fn: Callable[[], T]) -> T:
        with self.lock:
            try:
                return fn()
            finally:
                self.store.end_read()
