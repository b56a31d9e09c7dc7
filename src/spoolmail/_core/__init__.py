"""The pure core: envelopes, replies, pickup parsing, routing decisions, retry arithmetic, DSNs.

Nothing in this package imports ``fs``, ``socket``, ``dns`` or reads a clock; times and random
sources are handed in. ``tests/test_package.py`` keeps it that way.
"""
