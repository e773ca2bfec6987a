"""Reproducible public seeds derived from integers, without touching any global RNG.

These seeds are public (the server can compute them): they order batches and seed dropout, nothing
that protects data. Secret randomness (VisualMixer's permutations, DP noise and sampling) comes from
the client's keyed PRF (:mod:`fl_vmix.privacy.keyed`).
"""

from __future__ import annotations

from fl_vmix.privacy.keyed import hash_fields

_SEED_MASK = (1 << 63) - 1


def seed_for(*fields: int) -> int:
    """A reproducible 63-bit seed from integers (run seed, partition, round, ...)."""
    return int(hash_fields(0x5EED, *fields).item()) & _SEED_MASK
