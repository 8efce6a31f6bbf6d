"""On-device vision: camera sources, frame ring buffer, renderer, models and fusion evidence.

Imports run one way: vision may use sensing/layout/config, never events or publish; the pipeline
and fusion (``daemon.events``) import vision.
"""
