"""Flower glue of the training-level DP methods: the client-side clipping mod, the server's DP
wrapper with its accountant, and where a DP-SGD client keeps its accountant between rounds.

The methods themselves (:mod:`fl_vmix.privacy.training_level`) and the DP-SGD loop
(:mod:`fl_vmix.training.dp_sgd`) know nothing of Flower.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fl_vmix.privacy.training_level import CentralDP
from fl_vmix.training.dp_sgd import AccountantHistory

ACCOUNTANT_STATE_KEY = "fl_vmix.dp_sgd"
UNIFORM_WEIGHT_KEY = "uniform-weight"  # every reply carries 1: Flower's DP accountant needs equal weights


def optional_fixedclipping_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower's client-side clipping, applied only when the server's DP wrapper asks for it (its
    config carries the clipping norm); other runs pass through untouched."""
    if msg.metadata.message_type.startswith(MessageType.TRAIN) and msg.content.config_records:
        config = next(iter(msg.content.config_records.values()))
        if KEY_CLIPPING_NORM in config:
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def wrap_central_dp(strategy: Strategy, method: CentralDP, num_clients: int) -> Strategy:
    """Wrap a FedAvg-family strategy with Flower's client-side fixed-clipping DP and its RDP accountant
    (client-level DP over the federation, no sampling amplification: every client takes part)."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=method.delta,
            population_size=num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, method.noise_multiplier, method.clipping_norm, num_clients, accountant=accountant
    )


def seed_central_dp_noise(seed: int | None) -> None:
    """Seed NumPy's global RNG, which Flower's DP wrapper draws central DP's noise from.

    ``None`` (the default of every run): 256 bits of OS entropy, so that nobody who knows the run's seed
    (every client receives it) can regenerate the noise and subtract it from the released model. An integer
    (``reproducible_noise=true``) makes the noise a function of that public seed: reruns match, but the
    guarantee then holds only against those who do not know the seed.
    """
    if seed is None:
        np.random.seed(np.frombuffer(secrets.token_bytes(32), dtype=np.uint32))
    else:
        np.random.seed(seed)


def load_accountant_history(context: Context) -> AccountantHistory:
    """The DP-SGD accountant history this node kept in ``context.state`` (empty in round 1)."""
    record = context.state.config_records.get(ACCOUNTANT_STATE_KEY)
    if record is None:
        return ()
    return tuple((float(a), float(b), int(c)) for a, b, c in json.loads(str(record["history"])))


def save_accountant_history(context: Context, history: AccountantHistory) -> None:
    context.state.config_records[ACCOUNTANT_STATE_KEY] = ConfigRecord({"history": json.dumps(list(history))})
