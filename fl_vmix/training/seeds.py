"""Reproducible seeds derived from integers or from a client's key, without touching any global RNG."""

from __future__ import annotations

from fl_vmix.privacy.keyed import derive_seed, hash_fields

_SEED_MASK = (1 << 63) - 1


def seed_for(*fields: int) -> int:
    """A reproducible 63-bit seed from integers (run seed, partition, round, ...)."""
    return int(hash_fields(0x5EED, *fields).item()) & _SEED_MASK


def key_seed(key: bytes) -> int:
    """A seed for a client's keyed noise (pixel DP, DP-Pix): a hash of the key, which it does not reveal."""
    return derive_seed(key) & _SEED_MASK
