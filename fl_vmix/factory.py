"""The one place that turns an :class:`~fl_vmix.experiment.Experiment` into objects: a client's data,
the model, the optimiser, the privacy method and the local client.

Every consumer builds through here: the Flower apps, validation, the report, the attack suite, the
deployment export and the scripts. The Flower strategy is the one exception: it is a Flower object,
built by :func:`fl_vmix.apps.strategy.build_strategy` from the same experiment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_vmix.data import ClientData, load_client_data, load_dataset, subsample
from fl_vmix.data.export import load_exported_client
from fl_vmix.experiment import ConfigError, Experiment, PrivacySettings
from fl_vmix.models import build_model as build_registered_model
from fl_vmix.optim import build_optimizer as build_registered_optimizer
from fl_vmix.optim import round_lr
from fl_vmix.privacy.base import PrivacyMethod
from fl_vmix.privacy.methods import build_privacy_method, method_parameters
from fl_vmix.privacy.training_level import DPSGD
from fl_vmix.training.client import ClientSettings, DPSGDTrainer, LocalClient, Trainer, plain_trainer
from fl_vmix.training.device import Compute
from fl_vmix.training.dp_sgd import make_opacus_compatible

# Shapes known without data (a Deployment Engine server holds none): (num_classes, channels, side).
KNOWN_SHAPES = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
MEDMNIST_SIDE = 28


def dataset_shape(experiment: Experiment) -> tuple[int, int, int]:
    """(num_classes, channels, image side) of the experiment's dataset, as the model sees it.

    The side is ``dataset.image_size`` when set. Known datasets answer without data; others are read from the
    (cached) training split.
    """
    classes, channels, side = _stored_shape(experiment)
    return classes, channels, experiment.dataset.image_size or side


def _stored_shape(experiment: Experiment) -> tuple[int, int, int]:
    dataset = experiment.dataset
    if dataset.name in KNOWN_SHAPES:
        return KNOWN_SHAPES[dataset.name]
    import medmnist

    if dataset.name in medmnist.INFO:
        info = medmnist.INFO[dataset.name]
        return len(info["label"]), int(info["n_channels"]), MEDMNIST_SIDE
    data = load_dataset(dataset.name, dataset.root, "train", cache_dir=dataset.cache_dir)
    return len(data.classes), int(data.images.shape[1]), int(data.images.shape[-1])


def build_model(experiment: Experiment, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A freshly initialised model (from torch's global RNG); the same on server and clients."""
    region = experiment.privacy.region_size if experiment.model.invariant else None
    model = build_registered_model(
        experiment.model.name,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        invariant_region=region,
    )
    if experiment.privacy.method == DPSGD.name:
        model = make_opacus_compatible(model)
    return model


def initial_model(experiment: Experiment) -> nn.Module:
    """The global model of round 1: seeded with the run's seed, exactly as the server seeds it."""
    num_classes, channels, size = dataset_shape(experiment)
    torch.manual_seed(experiment.seed)
    return build_model(experiment, num_classes, channels, size)


def build_optimizer(
    experiment: Experiment, params: Iterable[nn.Parameter], server_round: int = 1
) -> torch.optim.Optimizer:
    """The optimiser a client trains ``server_round`` with (its learning rate follows ``optimizer.schedule``)."""
    opt = experiment.optimizer
    lr = round_lr(opt.lr, opt.schedule, server_round, experiment.num_rounds)
    return build_registered_optimizer(opt.name, params, lr=lr, weight_decay=opt.weight_decay, extra=opt.extra)


def build_privacy(privacy: PrivacySettings, key: bytes | None) -> PrivacyMethod:
    """The client's privacy method, keyed by the client's secret.

    Keyed methods take the key itself: VisualMixer's permutations and the noise of the image-DP methods come
    from the client's keyed PRF, so they are secret to the client (DP-SGD's noise and sampling come from OS
    entropy unless the experiment asks for ``reproducible_noise``, see :func:`trainer_for`).
    Image noise is a function of the key, the dataset, the sample and the setting, so a second release of an
    image is the same release (no averaging gain, no public seed in it). ``key=None``
    (the server, for a training-level method) builds methods that need no secret; a keyed method then
    says where keys come from.
    """
    params: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in privacy.params.items()}
    accepted = method_parameters(privacy.method)
    if key is not None and "key" in accepted:
        params["key"] = key
    try:
        return build_privacy_method(privacy.method, **params)
    except ValueError as err:
        raise ConfigError(f"privacy.{privacy.method}: {err}") from err


def client_data(experiment: Experiment, node_config: Mapping[str, Any]) -> ClientData:
    """The node's own data: its exported folder (Deployment Engine) or its partition (simulation)."""
    if "data-path" in node_config:
        return load_exported_client(Path(str(node_config["data-path"])).expanduser())
    dataset, partition = experiment.dataset, experiment.partition
    scheme_params: dict[str, Any] = {}
    if partition.alpha is not None:
        scheme_params["alpha"] = partition.alpha
    if partition.classes_per_partition is not None:
        scheme_params["classes_per_partition"] = partition.classes_per_partition
    data = load_client_data(
        dataset.name,
        partition_id=int(node_config["partition-id"]),
        num_partitions=int(node_config["num-partitions"]),
        scheme=partition.scheme,
        seed=experiment.seed,
        test_fraction=dataset.test_fraction,
        root=dataset.root,
        cache_dir=dataset.cache_dir,
        **scheme_params,
    )
    return subsample(data, dataset.data_fraction, experiment.seed)


def trainer_for(method: PrivacyMethod, reproducible_noise: bool = False) -> Trainer:
    """DP-SGD clients train with Opacus (noise from OS entropy unless ``reproducible_noise``); every other
    method trains plainly on its protected images."""
    return DPSGDTrainer(method, reproducible_noise) if isinstance(method, DPSGD) else plain_trainer


def compute_for(experiment: Experiment) -> Compute:
    """The experiment's device and precision as this process resolves them (DeviceError if it cannot).
    DP-SGD stays in fp32 (Opacus clips per-sample gradients in float32), so ``amp=auto`` means off there."""
    return Compute.of(experiment.device, experiment.amp, fp32_only=experiment.privacy.method == DPSGD.name)


def local_client(experiment: Experiment, data: ClientData, key: bytes) -> LocalClient:
    """A client of ``experiment`` holding ``data`` and protecting it with ``key``, on this process's device."""
    method = build_privacy(experiment.privacy, key)
    settings = ClientSettings(
        seed=experiment.seed,
        batch_size=experiment.batch_size,
        vfe_window=experiment.privacy.region_size,
        dynamic=experiment.privacy.dynamic,
        compute=compute_for(experiment),
        image_size=experiment.dataset.image_size,
        augment=experiment.dataset.augment,
    )
    return LocalClient(
        data,
        method,
        make_model=lambda classes, channels, size: build_model(experiment, classes, channels, size),
        make_optimizer=lambda params, server_round: build_optimizer(experiment, params, server_round),
        settings=settings,
        trainer=trainer_for(method, experiment.reproducible_noise),
    )
