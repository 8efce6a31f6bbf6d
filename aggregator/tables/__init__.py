"""cartd's SQL, one module per table (or pair of tables that only make sense together).

Why: the engine decides *what* to write; these functions know *how* it is spelt in SQL. A column
is added in a numbered migration (aggregator/schema.py) and then read or written only here, so a
reader finds every statement touching a table in one file. Every function takes the Store first
and uses ``?`` placeholders (store.py translates them for PostgreSQL).
"""
from . import deadletters, events, lines, receipts, seqs, sessions, tracking, units

__all__ = ["deadletters", "events", "lines", "receipts", "seqs", "sessions", "tracking", "units"]

