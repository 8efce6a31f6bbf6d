"""The store's staff console: review queue with evidence, unit health and stock, sign-in.

- ``accounts.py``  staff accounts, roles, sign-in sessions (argon2 hashes, itsdangerous cookies)
- ``desk.py``      what staff may write: review decisions, restock acknowledgements (audited)
- ``unitwatch.py`` the units' retained status / health / state documents, from MQTT (bounded)
- ``server.py``    the HTTP server: pages, JSON API, Server-Sent Events, CSRF checks

``python -m aggregator.web`` starts it; docs/console.md describes it.
"""
