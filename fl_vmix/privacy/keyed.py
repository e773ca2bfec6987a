"""Keyed randomness: a cryptographic PRF of full key strength, evaluated at arbitrary counters.

VisualMixer's only secret is the client's key; everything else is public (Kerckhoffs). So every
random choice that hides an image must come from a pseudorandom function of that key, and no value
derived from the key may be reused for two images, channels or regions: a reused permutation lets
anyone who knows a few of a client's images undo the others (see ``docs/threat_model.md``).

Construction (:class:`KeyedPRF`):

* **Key.** ``bytes`` of 16 to 64 bytes (128 to 512 bits), checked by :func:`check_key`. No default
  key exists anywhere; clients read theirs from a key file (``fl_vmix.apps.keys``).
* **Domain separation.** A subkey per use, ``K_ctx = BLAKE2b-256(key=K, person="fl_vmix.prf.v2",
  data=context)``. Keyed BLAKE2b is a PRF (its designers' claim, the MAC mode of RFC 7693), so
  subkeys of different contexts (settings, image shape, purpose) are independent 256-bit keys.
* **Stream.** ``F(id, epoch, i) = AES-256_{K_ctx}(id || epoch || i)`` with ``id`` a little-endian
  int64, ``epoch`` and the block index ``i`` little-endian uint32: one 16-byte counter block per
  128 bits of output. AES is a pseudorandom permutation; on distinct counters (all counters here are
  distinct) it is a PRF up to the PRP/PRF switching bound q^2 / 2^129. Each block is evaluated on its
  own (ECB over counter blocks, OpenSSL through ``cryptography``), so a sample's numbers depend only on
  (key, context, id, epoch) and never on the batch it arrives in, on the device, or on call order.

:class:`KeyedPRF` returns the words as NumPy ``uint32``; the permutation code turns them into
uniform permutations (:mod:`fl_vmix.privacy.permutations`). :func:`hash_fields` below is not keyed
and not cryptographic: it makes *public* seeds from public integers (run seed, round) only.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64  # BLAKE2b's key limit
_PERSON = b"fl_vmix.prf.v2"  # BLAKE2b personalisations: at most 16 bytes
_SEED_PERSON = b"fl_vmix.seed.v2"
_UINT32 = 1 << 32


def check_key(key: object, owner: str = "VisualMixer") -> bytes:
    """The key as ``bytes`` after checking its type and length (16-64 bytes); ``owner`` names the caller."""
    if key is None:
        raise ValueError(
            f"{owner} needs the client's secret key and none was given: there are no default keys. Keys come from "
            "the node: a SuperNode's key file (node config key-file, written by `python -m fl_vmix.deploy export` "
            "or `keygen`), a simulated client's key folder ($FL_VMIX_KEY_DIR, fl_vmix.apps.keys.node_key); "
            "for your own use, secrets.token_bytes(32)"
        )
    if isinstance(key, bytearray):
        key = bytes(key)
    if not isinstance(key, bytes):
        raise ValueError(
            f"{owner}: a key must be bytes (16-64 random bytes), got {type(key).__name__}: generate one with "
            "secrets.token_bytes(32); federated clients read theirs from their key file "
            "(`python -m fl_vmix.deploy keygen`, or the simulation key folder)"
        )
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"{owner}: a key needs {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (128-512 bits), got {len(key)}: "
            "use secrets.token_bytes(32) or a key file from `python -m fl_vmix.deploy keygen`"
        )
    return key


def derive_subkey(key: bytes, context: bytes) -> bytes:
    """A 256-bit subkey for one use of ``key`` (keyed BLAKE2b over the context)."""
    return hashlib.blake2b(context, key=check_key(key), digest_size=32, person=_PERSON).digest()


def context_bytes(*fields: object) -> bytes:
    """An unambiguous encoding of public settings (a length-prefixed repr per field) for subkeys."""
    parts = [repr(field).encode() for field in fields]
    return b"".join(struct.pack("<I", len(part)) + part for part in parts)


SAMPLE_ID_LIMIT = 1 << 63  # the id domain: integers in [0, 2**63), stored as int64 (the counter's first field)


def check_sample_ids(sample_ids: object) -> np.ndarray:
    """Sample ids as a 1-D int64 array after checking the id domain and that no id repeats.

    An id names one image; the counter holds it as int64, so ids are the integers in ``[0, 2**63)``:
    negative ids and ids of 2**63 or more would alias others (uint64 ``2**64 - 1`` is int64 ``-1``) and
    are refused, as is an id given twice in one batch (two images would share their permutation or
    noise, and knowing one would reveal the other). Accepts a tensor, an array, a sequence or one int."""
    if isinstance(sample_ids, torch.Tensor):
        sample_ids = sample_ids.detach().cpu().numpy()
    if isinstance(sample_ids, (int, np.integer)) and not isinstance(sample_ids, (bool, np.bool_)):
        sample_ids = [sample_ids]
    if isinstance(sample_ids, (list, tuple)):
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in sample_ids):
            raise ValueError(
                "sample_ids must be a sequence of ints (one id per image): pass the dataset index of each image"
            )
        outside = [int(i) for i in sample_ids if not 0 <= int(i) < SAMPLE_ID_LIMIT]
        if outside:
            raise ValueError(
                f"sample ids must lie in [0, 2**63) (non-negative int64), got {outside[:3]}: "
                "use the image's index in its dataset split"
            )
        sample_ids = np.array([int(i) for i in sample_ids], dtype=np.int64)
    if not isinstance(sample_ids, np.ndarray):
        raise ValueError(f"sample_ids must be a tensor, array or list of ints, got {type(sample_ids).__name__}")
    if not np.issubdtype(sample_ids.dtype, np.integer) or sample_ids.ndim != 1:
        raise ValueError(
            f"sample_ids must be a 1-D integer array (one id per image), got shape {sample_ids.shape} "
            f"dtype {sample_ids.dtype}: pass the dataset index of each image as int64"
        )
    if sample_ids.size and (
        (np.issubdtype(sample_ids.dtype, np.signedinteger) and int(sample_ids.min()) < 0)
        or int(sample_ids.max()) >= SAMPLE_ID_LIMIT
    ):
        bad = sample_ids[(sample_ids.astype(object) < 0) | (sample_ids.astype(object) >= SAMPLE_ID_LIMIT)]
        raise ValueError(
            f"sample ids must lie in [0, 2**63) (non-negative int64), got {bad[:3].tolist()}: "
            "use the image's index in its dataset split (a uint64 id of 2**63 or more would alias a negative one)"
        )
    ids = sample_ids.astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        values, counts = np.unique(ids, return_counts=True)
        raise ValueError(
            f"sample ids repeat within one batch ({values[counts > 1][:3].tolist()}): two images with one id "
            "would share their permutation or noise, and knowing one image would reveal the other; give every "
            "image its own id (its index in its dataset split)"
        )
    return ids


def check_dataset(dataset: object) -> str | None:
    """``None`` or the non-empty printable public name of the data the sample ids index (bound into contexts)."""
    if dataset is not None and (not isinstance(dataset, str) or not dataset or not dataset.isprintable()):
        raise ValueError(
            f"dataset must be None or a non-empty printable name of the data the ids index (e.g. "
            f"'cifar10/train/<fingerprint>', DatasetIdentity.token), got {dataset!r}"
        )
    return dataset


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= int(epoch) < _UINT32:
        raise ValueError(f"epoch must be an int in [0, 2**32), got {epoch!r}")
    return int(epoch)


class KeyedPRF:
    """Pseudorandom 32-bit words ``F_K(context; id, epoch, i)`` (see the module docstring)."""

    def __init__(self, key: bytes, context: bytes) -> None:
        self._subkey = derive_subkey(key, context)
        self._cipher = Cipher(algorithms.AES(self._subkey), modes.ECB())

    def words(self, sample_ids: np.ndarray | torch.Tensor, epoch: int, count: int) -> np.ndarray:
        """``[len(sample_ids), count]`` uint32 words; row ``b`` depends only on ``sample_ids[b]`` and ``epoch``."""
        ids = check_sample_ids(sample_ids)
        blocks = -(-int(count) // 4)
        if blocks >= _UINT32:
            raise ValueError(f"{count} words per sample exceed the counter space (2**34): use smaller images")
        counters = np.empty((len(ids), blocks, 2), dtype="<u8")
        counters[:, :, 0] = ids.view(np.uint64)[:, None]
        counters[:, :, 1] = np.uint64(_check_epoch(epoch)) | (np.arange(blocks, dtype=np.uint64) << np.uint64(32))
        # update_into a preallocated buffer: the same bytes as update(), which is ~10x slower on MBs of output
        # (it builds a bytes object); the buffer has the block of slack update_into asks for.
        data = counters.reshape(-1).view(np.uint8)
        stream = np.empty(data.size + 16, dtype=np.uint8)
        written = self._cipher.encryptor().update_into(data.data, stream.data)
        return stream[:written].view("<u4").reshape(len(ids), blocks * 4)[:, :count]

    def seed(self, *fields: int) -> int:
        """A secret 63-bit seed for a seeded generator (e.g. noise), one per tuple of public fields:
        keyed BLAKE2b under this context's subkey, separate from the AES stream by its personalisation."""
        if not fields or any(isinstance(f, bool) or not isinstance(f, (int, np.integer)) for f in fields):
            raise ValueError(f"seed fields must be integers, got {fields!r}")
        digest = hashlib.blake2b(
            context_bytes(*(int(f) for f in fields)), key=self._subkey, digest_size=8, person=_SEED_PERSON
        )
        return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------------
# Public (unkeyed) counter hashing, for seeds made of public values only.
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the signed int64 torch stores."""
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


GOLDEN, MUL1, MUL2 = _signed(_GOLDEN), _signed(_MUL1), _signed(_MUL2)


def _shift_right_logical(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on an int64 tensor (bit-identical to the unsigned reference)."""
    z = z ^ _shift_right_logical(z, 30)
    z = z * MUL1
    z = z ^ _shift_right_logical(z, 27)
    z = z * MUL2
    return z ^ _shift_right_logical(z, 31)


def mix64_reference(value: int) -> int:
    """Pure-Python SplitMix64 finaliser, the unsigned ground truth for tests."""
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return _signed(z ^ (z >> 31))


def hash_fields(seed: int, *fields: torch.Tensor | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Hash a *public* seed and integer fields (broadcast together) into one int64 tensor on ``device``.

    Not keyed and not a PRF: use it for reproducible public seeds, never for anything secret."""
    h = torch.tensor(seed, dtype=torch.int64, device=device)
    for field in fields:
        field = torch.as_tensor(field, dtype=torch.int64, device=device)
        h = mix64(h + mix64(field * GOLDEN + 1))
    return h
