"""Checks that stop a bad experiment before its first round, beyond what parsing can see.

:meth:`Experiment.from_dict` already refused unknown names and out-of-range numbers. Here the model
and the privacy method are built and run once on a tiny batch of the dataset's shape, so invalid
parameters (a region larger than the image, a target below 1, ...) fail now and not in round 1, and,
in the simulation engine, the data must be present.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from fl_vmix.data import load_dataset
from fl_vmix.experiment import ConfigError, Experiment
from fl_vmix.factory import build_model, build_privacy, client_data, compute_for, dataset_shape
from fl_vmix.privacy.training_level import DPSGD
from fl_vmix.training.device import cuda_available

logger = logging.getLogger("fl_vmix.checks")

VALIDATION_KEY = b"validation-key-not-used-by-clients"  # public by design: probes the method, never protects data


def check_experiment(experiment: Experiment, check_data: bool | None = None) -> None:
    """Raise ConfigError or ValueError naming the setting and the fix.

    ``check_data=None`` checks the data only in the simulation engine: on the Deployment Engine the
    ServerApp runs on the SuperLink host, which holds no client data (each SuperNode has its own).
    """
    if check_data is None:
        check_data = experiment.engine.name == "simulation"
    check_settings(experiment)
    if experiment.engine.name == "simulation":
        check_compute(experiment)  # on the Deployment Engine each SuperNode resolves the device it has
    num_classes, channels, size = dataset_shape(experiment)
    model = build_model(experiment, num_classes, channels, size)
    method = build_privacy(experiment.privacy, VALIDATION_KEY)
    probe = torch.linspace(0, 1, 2 * channels * size * size).view(2, channels, size, size)
    with torch.no_grad():
        model.eval()
        model(method(probe, torch.tensor([0, 1]), 0))
    if check_data:
        check_clients_fit(experiment)
        client_data(experiment, {"partition-id": 0, "num-partitions": experiment.num_clients})


def check_clients_fit(experiment: Experiment) -> None:
    """``num_clients`` against the training images there are: refused above one image per client (with the
    key the user typed, not the data layer's ``num_partitions``), and a warning when the average client would
    train on less than one batch (the rounds would then measure noise)."""
    dataset = experiment.dataset
    n = len(load_dataset(dataset.name, dataset.root, "train", cache_dir=dataset.cache_dir).labels)
    clients = experiment.num_clients
    if clients > n:
        raise ConfigError(
            f"num_clients={clients} exceeds the {n} training images of {dataset.name}: set num_clients to at most "
            f"{n} (a few hundred images per client, e.g. num_clients={max(1, n // 500)}, trains meaningfully)"
        )
    per_client = n * (1 - dataset.test_fraction) * dataset.data_fraction / clients
    if per_client < experiment.batch_size:
        logger.warning(
            "num_clients=%d on %s (%d training images, dataset.data_fraction=%g, dataset.test_fraction=%g) leaves "
            "each client about %.0f training image(s), less than one batch (batch_size=%d): its accuracy will "
            "mostly measure noise; use fewer clients (num_clients=%d keeps a batch each)%s",
            clients,
            dataset.name,
            n,
            dataset.data_fraction,
            dataset.test_fraction,
            per_client,
            experiment.batch_size,
            max(1, int(n * (1 - dataset.test_fraction) * dataset.data_fraction // experiment.batch_size)),
            " or a larger dataset.data_fraction" if dataset.data_fraction < 1 else "",
        )


def check_settings(experiment: Experiment) -> None:
    """Settings that cannot work together, wherever the run executes."""
    if experiment.amp not in ("off", "auto") and experiment.privacy.method == DPSGD.name:
        raise ConfigError(
            f"amp={experiment.amp} with privacy=dp_sgd: Opacus clips per-sample gradients in float32, so DP-SGD "
            "does not run in mixed precision: set amp=off (or amp=auto, which is fp32 for DP-SGD)"
        )
    if experiment.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=true needs the tensorboard package, which is not installed: "
            "pip install 'fl-vmix[tensorboard]' (or set tensorboard=false)"
        )


def check_compute(experiment: Experiment) -> None:
    """The device and GPU settings of a simulation, checked on the machine that runs it.

    Ray hides every GPU from a client that reserves none and gives a client that reserves one its GPU
    as ``cuda:0``; a client that asks for a GPU share on a machine without one waits forever.
    """
    engine = experiment.engine
    compute_for(experiment)  # device=cuda without CUDA, amp=fp16 on the CPU: DeviceError with the fix
    gpus = engine.num_gpus_per_client or 0.0
    if gpus > 0 and not cuda_available():
        raise ConfigError(
            f"engine.num_gpus_per_client={gpus} but this machine has no CUDA GPU: Ray would wait forever for one; "
            "set engine.num_gpus_per_client=0 (and device=cpu or auto)"
        )
    if experiment.device.startswith("cuda") and gpus == 0:
        raise ConfigError(
            f"device={experiment.device} with engine.num_gpus_per_client=0: Ray hides the GPUs from clients that "
            "reserve none, so they could not use CUDA: set engine.num_gpus_per_client (e.g. 0.5: two clients per GPU)"
        )
    if experiment.device.startswith("cuda:") and experiment.device != "cuda:0":
        raise ConfigError(
            f"device={experiment.device} in a simulation: Ray gives each client its GPU as cuda:0 (it sets "
            "CUDA_VISIBLE_DEVICES): use device=cuda, and CUDA_VISIBLE_DEVICES to choose the machine's GPUs"
        )
    if experiment.device == "auto" and gpus == 0 and cuda_available():
        logger.warning(
            "device=auto with engine.num_gpus_per_client=0: Ray hides the GPUs from the clients, so they train on "
            "the CPU; set engine.num_gpus_per_client=0.5 (two clients per GPU) to train on the GPU"
        )
