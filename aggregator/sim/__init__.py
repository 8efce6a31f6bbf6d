"""Store-in-a-box: a simulated store (shelf units, shoppers, gates, tracking) that drives the real
``shelfd`` daemons and ``cartd`` over a private Mosquitto. See ``docs/store-demo.md``.

- ``store``:   the store's layout: units, shelves, plates, planogram, prices
- ``plan``:    the shoppers' plan (deterministic for a seed) and the truth of what each took
- ``tracking``: the overhead-camera feed derived from the plan, clean or noisy
- ``runner``:  starts broker, units, cartd; plays gates and tracking on the store clock
- ``score``:   receipts against the truth: line-item precision, recall, F1
"""
