"""Gondola's cart aggregator (cartd): item events + gates + tracking → carts → receipts."""
__version__ = "0.1.0"
