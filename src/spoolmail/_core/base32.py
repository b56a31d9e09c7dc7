"""Random name parts in base 32 (``0-9a-v``): owner tokens, temporary files, triggers.

Apart from ``ids`` so that a small program (``_store.orders``) can name files as the store does
without importing attrs.
"""

from __future__ import annotations

__all__ = ["ALPHABET", "token"]

ALPHABET = "0123456789abcdefghijklmnopqrstuv"
# A byte's low five bits as a base-32 digit: 256 is a multiple of 32, so each is uniform.
_BASE32_OF_BYTE = bytes(ord(ALPHABET[value & 31]) for value in range(256))


def token(random_bytes: bytes) -> str:
    """A name part of base-32 digits, one for each random byte (5 random bits a character)."""
    return random_bytes.translate(_BASE32_OF_BYTE).decode("ascii")
