"""One federated client without Flower: its data, its privacy method, and what a round does with them.

The ClientApp (:mod:`fl_vmix.apps.client_app`) turns Flower messages into calls of
:meth:`LocalClient.train` / :meth:`LocalClient.evaluate`; ``scripts/bench_overhead.py`` calls them
directly. A client protects each split once, when a round first needs it, and keeps it: a static
method shuffles an image the same way every round, so re-protecting would only cost time. In
``dynamic`` mode the training split is protected anew every round (the model never sees the same
arrangement twice); the test split stays fixed so accuracies are comparable across rounds.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from fl_vmix.data.client import ClientData
from fl_vmix.data.transforms import augment, resize_images
from fl_vmix.privacy.base import PrivacyMethod
from fl_vmix.privacy.training_level import DPSGD
from fl_vmix.training.device import CPU, Compute
from fl_vmix.training.dp_sgd import AccountantHistory, train_dp_sgd
from fl_vmix.training.loops import evaluate_model, normalise, train_epochs
from fl_vmix.training.obfuscation import ObfuscatedSplit, obfuscate
from fl_vmix.training.seeds import seed_for

logger = logging.getLogger("fl_vmix.client")


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


ModelFactory = Callable[[int, int, int], nn.Module]  # (num_classes, channels, image side) -> a fresh model
OptimizerFactory = Callable[[Iterable[nn.Parameter], int], torch.optim.Optimizer]  # (parameters, server round)


@dataclass(frozen=True)
class ClientSettings:
    seed: int  # the run's seed: with the partition and the round it seeds batches and dropout
    batch_size: int
    vfe_window: int  # window of the reported VFE (the method's region size)
    dynamic: bool  # protect the training split anew every round
    compute: Compute = CPU  # where (and in which precision) this client protects, trains and evaluates
    image_size: int | None = None  # resize the clear images to this side before protecting them (None: as they are)
    augment: str = "none"  # augment the clear training images every round before protecting them ("crop_flip")

    @property
    def fresh_every_round(self) -> bool:
        """Whether the protected training split changes every round (new shuffle or new augmentation)."""
        return self.dynamic or self.augment != "none"


@dataclass(frozen=True)
class RoundResult:
    weights: dict[str, torch.Tensor]  # the trained model's state dict (empty for evaluation)
    metrics: dict[str, float | int]
    accountant_history: AccountantHistory | None = None  # DP-SGD: keep it and hand it to the next round


@dataclass(frozen=True)
class LocalTraining:
    """What one round of local training is asked to do."""

    epochs: int
    batch_size: int
    seed: int  # seeds the batch order (and DP-SGD's sampling and noise)
    proximal_mu: float = 0.0  # FedProx
    accountant_history: AccountantHistory = ()  # DP-SGD: the steps of earlier rounds
    compute: Compute = CPU


TrainResult = tuple[dict[str, float], AccountantHistory | None]
# How a client trains on its protected split: plainly, or with DP-SGD (which returns its accountant history).
Trainer = Callable[[nn.Module, ObfuscatedSplit, torch.optim.Optimizer, LocalTraining], TrainResult]


def plain_trainer(
    model: nn.Module, split: ObfuscatedSplit, optimizer: torch.optim.Optimizer, job: LocalTraining
) -> TrainResult:
    metrics = train_epochs(
        model, split.images, split.labels, optimizer, epochs=job.epochs, batch_size=job.batch_size, seed=job.seed,
        proximal_mu=job.proximal_mu, compute=job.compute,
    )  # fmt: skip
    return metrics, None


def entropy_seeds() -> tuple[int, int]:
    """(sampling seed, noise seed) from OS entropy: nobody, the key holder included, can regenerate them."""
    return secrets.randbits(64), secrets.randbits(64)


@dataclass(frozen=True)
class DPSGDTrainer:
    """DP-SGD with Opacus. Its Poisson sampling and noise are what the guarantee rests on: by default they come
    from OS entropy (a run with derived simulation keys has a public key, so a key-seeded draw would be public
    too); ``reproducible`` draws them from the client's keyed PRF under the run's seed, so a rerun matches."""

    method: DPSGD
    reproducible: bool = False

    def __call__(
        self, model: nn.Module, split: ObfuscatedSplit, optimizer: torch.optim.Optimizer, job: LocalTraining
    ) -> TrainResult:
        if job.compute.device.type != "cpu":
            # fl_vmix.training.dp_sgd feeds batches from CPU tensors and draws Opacus' noise from a CPU
            # generator (torch refuses a CPU generator for CUDA tensors): DP-SGD trains on the CPU, in
            # float32, whatever the device setting says. Evaluation still runs on the device.
            _warn_once(f"DP-SGD trains on the CPU (CPU batches and noise generator), not on {job.compute.device}")
            model.to("cpu")  # in place: the optimiser keeps the same parameters
        # Secret from the server either way; reproducible ones only as secret as the client's key.
        sampling_seed, noise_seed = self.method.secret_seeds(job.seed) if self.reproducible else entropy_seeds()
        result = train_dp_sgd(
            model, normalise(split.images), split.labels, optimizer, self.method, job.accountant_history,
            epochs=job.epochs, batch_size=job.batch_size, sampling_seed=sampling_seed, noise_seed=noise_seed,
        )  # fmt: skip
        return result.metrics, result.history


class LocalClient:
    """A client's round logic: protect (once, or every round in dynamic mode), train, evaluate, report."""

    def __init__(
        self,
        data: ClientData,
        method: PrivacyMethod,
        make_model: ModelFactory,
        make_optimizer: OptimizerFactory,
        settings: ClientSettings,
        trainer: Trainer = plain_trainer,
    ) -> None:
        self.data, self.method, self.settings, self.trainer = data, method, settings, trainer
        self._make_model, self._make_optimizer = make_model, make_optimizer
        self._train: ObfuscatedSplit | None = None
        self._test: ObfuscatedSplit | None = None

    @property
    def partition_id(self) -> int:
        return self.data.partition_id

    @property
    def _protect_on(self) -> torch.device | None:
        """Protect on the training device; None keeps the CPU path (Numba kernels) of earlier versions."""
        device = self.settings.compute.device
        return None if device.type == "cpu" else device

    # ------------------------------------------------------------------------------------ splits
    @functools.cached_property
    def _resized_train_images(self) -> np.ndarray:
        # Without augmentation the resized clear images are the same every round: resize once (a dynamic shuffle
        # at 224 px would otherwise resize the whole split again each round).
        return resize_images(self.data.train_images, self.settings.image_size)

    def _clear_train_images(self, server_round: int) -> np.ndarray:
        """The clear training images of ``server_round`` as the method receives them: augmented, then resized."""
        s = self.settings
        if s.augment == "none":
            return self._resized_train_images
        images = augment(self.data.train_images, s.augment, seed_for(s.seed, self.partition_id, server_round, 2))
        return resize_images(images, s.image_size)

    def train_split(self, server_round: int) -> ObfuscatedSplit:
        """The training images as the model sees them in ``server_round``."""
        d, window = self.data, self.settings.vfe_window
        epoch = server_round if self.settings.dynamic else 0  # dynamic: a new shuffle (or noise) every round
        if self.settings.fresh_every_round:
            return obfuscate(
                self.method, self._clear_train_images(server_round), d.train_labels, d.train_ids, epoch=epoch,
                vfe_window=window, device=self._protect_on, dataset=d.dataset,
            )  # fmt: skip
        if self._train is None:
            self._train = obfuscate(
                self.method, self._clear_train_images(0), d.train_labels, d.train_ids, epoch=0, vfe_window=window,
                device=self._protect_on, dataset=d.dataset,
            )  # fmt: skip
        return self._train

    def test_split(self) -> ObfuscatedSplit:
        if self._test is None:
            d = self.data
            self._test = obfuscate(
                self.method,
                resize_images(d.test_images, self.settings.image_size),
                d.test_labels,
                d.test_ids,
                epoch=0,
                vfe_window=self.settings.vfe_window,
                similarity=False,
                device=self._protect_on,
                dataset=d.dataset,
            )
        return self._test

    def model(self, weights: Mapping[str, torch.Tensor]) -> nn.Module:
        """The model with the global ``weights``, on this client's device."""
        images = self.data.train_images if len(self.data.train_images) else self.data.test_images
        side = self.settings.image_size or int(images.shape[-1])
        model = self._make_model(self.data.num_classes, int(images.shape[1]), side)
        model.load_state_dict(weights)
        return model.to(self.settings.compute.device)

    # ------------------------------------------------------------------------------------ rounds
    def train(
        self,
        weights: Mapping[str, torch.Tensor],
        server_round: int,
        epochs: int,
        *,
        proximal_mu: float = 0.0,
        accountant_history: AccountantHistory = (),
    ) -> RoundResult:
        """Train the global ``weights`` for ``epochs`` local epochs on the protected training split."""
        split = self.train_split(server_round)
        model = self.model(weights)
        optimizer = self._make_optimizer(model.parameters(), server_round)
        seed, pid = self.settings.seed, self.partition_id
        torch.manual_seed(seed_for(seed, pid, server_round))  # dropout and anything else on the global RNG
        start = time.perf_counter()
        job = LocalTraining(
            epochs,
            self.settings.batch_size,
            seed_for(seed, pid, server_round, 1),
            proximal_mu,
            accountant_history,
            self.settings.compute,
        )
        metrics, history = self.trainer(model, split, optimizer, job)
        if "epsilon" not in metrics:
            epsilon = self.method.total_epsilon(server_round) if self.settings.dynamic else self.method.epsilon
            if epsilon is not None:
                metrics["epsilon"] = float(epsilon)  # local DP on images: per image, composed over re-releases
        report: dict[str, float | int] = {
            **metrics,
            "num-examples": len(split.labels),
            "vfe_corrected": split.vfe_corrected,
            "vfe_reference": split.vfe_reference,
            "ssim": split.ssim,
            "psnr": split.psnr,
            "obfuscation_s": split.seconds,
            "vfe_unreached_fraction": split.unreached / max(len(split.labels), 1),
            "train_time_s": time.perf_counter() - start,
        }
        trained = getattr(model, "_module", model)  # Opacus wraps the model: reply with the plain model's weights
        weights = {k: v.detach().cpu() for k, v in trained.state_dict().items()}  # Flower's arrays live on the CPU
        return RoundResult(weights, report, history)

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> RoundResult:
        """Loss and accuracy of the global ``weights`` on the protected local test split."""
        split = self.test_split()
        result = evaluate_model(self.model(weights), split.images, split.labels, compute=self.settings.compute)
        return RoundResult({}, {**result, "num-examples": len(split.labels)})


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Least-recently-used cache of at most ``size`` entries (a worker's clients and their protected data)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}; set engine.client_cache")
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = make()
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def resize(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}; set engine.client_cache")
        self.size = size
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
