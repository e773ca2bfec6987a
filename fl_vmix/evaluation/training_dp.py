"""Training-level DP baselines: DP-SGD on each client (Opacus) and central DP (Flower's wrapper).

Their image transform is the identity: the guarantee comes from training, and epsilon is reported
from an accountant that spans the whole run.

* ``dp_sgd``: every client trains with Opacus (per-sample clipping to ``max_grad_norm``, Gaussian
  noise ``noise_multiplier * max_grad_norm``, Poisson sampling). The client's RDP accountant history
  is kept in ``context.state`` between rounds, so the epsilon a client reports is cumulative over
  all its local steps in the run (example-level DP for that client's data, at ``delta``).
* ``central_dp``: Flower's ``DifferentialPrivacyClientSideFixedClipping`` wraps the strategy; each
  client clips its update to ``clipping_norm`` (``fixedclipping_mod``) and the server adds Gaussian
  noise ``noise_multiplier * clipping_norm / n`` to the mean. Flower's ``RdpAccountant`` composes one
  release per round (client-level DP over the federation, no sampling amplification, uniform
  weights), and the server records its cumulative epsilon.
"""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from torch import nn

from fl_vmix.evaluation.baselines import _check_delta, _check_positive
from fl_vmix.privacy.methods import TrainingLevelMethod, register_privacy_method

logger = logging.getLogger("fl_vmix.dp")
ACCOUNTANT_STATE_KEY = "fl_vmix.dp_sgd"
UNIFORM_WEIGHT_KEY = "uniform-weight"


@register_privacy_method("dp_sgd")
class DPSGD(TrainingLevelMethod):
    """DP-SGD on every client (Opacus). Epsilon is cumulative over the run, per client."""

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5) -> None:
        super().__init__(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta)
        _check_positive("noise_multiplier", noise_multiplier, "DP-SGD needs noise; use e.g. 1.0")
        _check_positive("max_grad_norm", max_grad_norm, "per-sample clipping bound; use e.g. 1.0")
        _check_delta(delta)
        self.noise_multiplier, self.max_grad_norm, self.delta = float(noise_multiplier), float(max_grad_norm), float(delta)


@register_privacy_method("central_dp")
class CentralDP(TrainingLevelMethod):
    """Central DP with client-side fixed clipping (Flower). Epsilon is the server accountant's."""

    def __init__(self, noise_multiplier: float = 1.0, clipping_norm: float = 1.0, delta: float = 1e-5) -> None:
        super().__init__(noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, delta=delta)
        _check_positive("noise_multiplier", noise_multiplier, "central DP needs noise; use e.g. 1.0")
        _check_positive("clipping_norm", clipping_norm, "update clipping bound; use e.g. 1.0")
        _check_delta(delta)
        self.noise_multiplier, self.clipping_norm, self.delta = float(noise_multiplier), float(clipping_norm), float(delta)


# ---------------------------------------------------------------------------------------------- DP-SGD
def make_opacus_compatible(model: nn.Module) -> nn.Module:
    """Opacus cannot clip per-sample gradients through BatchNorm (it mixes samples); replace such
    layers with GroupNorm, as Opacus' ModuleValidator.fix does, and say so."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    logger.warning(
        "DP-SGD: %s has layers Opacus cannot train privately (%s); replacing them (BatchNorm -> GroupNorm) "
        "on server and clients alike. Use model=cnn to train an unmodified model.",
        type(model).__name__, "; ".join(sorted({type(e).__name__ for e in errors})),
    )
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ValueError(f"DP-SGD cannot train {type(model).__name__} even after replacing layers: {remaining[0]}; use model=cnn")
    return fixed


def _load_history(context: Context) -> list[tuple[float, float, int]]:
    record = context.state.config_records.get(ACCOUNTANT_STATE_KEY)
    return [tuple(h) for h in json.loads(record["history"])] if record is not None else []  # type: ignore[misc]


def _save_history(context: Context, history: list[tuple[float, float, int]]) -> None:
    context.state.config_records[ACCOUNTANT_STATE_KEY] = ConfigRecord({"history": json.dumps(history)})


def train_dp_sgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    method: DPSGD,
    context: Context,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Local DP-SGD; the accountant's history persists in ``context.state`` across rounds.

    ``images`` are already normalised model inputs. Noise and Poisson sampling draw from generators
    seeded by ``seed``, so a round is reproducible.
    """
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = _load_history(context)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=method.noise_multiplier,
        max_grad_norm=method.max_grad_norm, poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    private_model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        for batch_images, batch_labels in private_loader:
            if len(batch_labels) == 0:  # Poisson sampling can draw an empty batch; the step still counts
                private_optimizer.zero_grad(set_to_none=True)
                continue
            private_optimizer.zero_grad(set_to_none=True)
            logits = private_model(batch_images)
            loss = F.cross_entropy(logits, batch_labels)
            loss.backward()
            private_optimizer.step()
            total_loss += float(loss.detach()) * len(batch_labels)
            correct += int((logits.argmax(1) == batch_labels).sum())
            seen += len(batch_labels)
    _save_history(context, engine.accountant.history)
    epsilon = float(engine.get_epsilon(method.delta))
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1), "epsilon": epsilon}


# ------------------------------------------------------------------------------------------ central DP
def optional_fixedclipping_mod(msg: Message, context: Context, call_next):  # noqa: ANN001, ANN201 - Flower mod signature
    """Flower's client-side clipping, applied only when the server's DP wrapper asks for it (its
    config carries the clipping norm); other runs pass through untouched."""
    if msg.metadata.message_type.startswith(MessageType.TRAIN) and msg.content.config_records:
        config = next(iter(msg.content.config_records.values()))
        if KEY_CLIPPING_NORM in config:
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def wrap_central_dp(strategy, method: CentralDP, num_clients: int, recording_mixin: type):  # noqa: ANN001, ANN201
    """Wrap a FedAvg strategy with Flower's client-side fixed-clipping DP and its RDP accountant."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=method.delta, population_size=num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    cls = type("RecordingCentralDP", (recording_mixin, DifferentialPrivacyClientSideFixedClipping), {})
    return cls(strategy, method.noise_multiplier, method.clipping_norm, num_clients, accountant=accountant)
