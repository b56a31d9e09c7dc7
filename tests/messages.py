"""Messages the tests send, written once: the small one many service tests route by recipient."""

from __future__ import annotations


def message(to: str) -> bytes:
    """A small message from alice@example.com to ``to`` (the envelope comes from the headers)."""
    return f"From: alice@example.com\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()
