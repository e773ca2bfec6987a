"""Checks that stop a bad experiment before its first round, beyond what parsing can see.

:meth:`Experiment.from_dict` already refused unknown names and out-of-range numbers. Here the model
and the privacy method are built and run once on a tiny batch of the dataset's shape, so invalid
parameters (a region larger than the image, a target below 1, ...) fail now and not in round 1, and,
in the simulation engine, the data must be present.
"""

from __future__ import annotations

import torch

from fl_vmix.experiment import Experiment
from fl_vmix.factory import build_model, build_privacy, client_data, dataset_shape

VALIDATION_KEY = b"validation-key-not-used-by-clients"  # public by design: probes the method, never protects data


def check_experiment(experiment: Experiment, check_data: bool | None = None) -> None:
    """Raise ConfigError or ValueError naming the setting and the fix.

    ``check_data=None`` checks the data only in the simulation engine: on the Deployment Engine the
    ServerApp runs on the SuperLink host, which holds no client data (each SuperNode has its own).
    """
    if check_data is None:
        check_data = experiment.engine.name == "simulation"
    num_classes, channels, size = dataset_shape(experiment)
    model = build_model(experiment, num_classes, channels, size)
    method = build_privacy(experiment.privacy, VALIDATION_KEY)
    probe = torch.linspace(0, 1, 2 * channels * size * size).view(2, channels, size, size)
    with torch.no_grad():
        model.eval()
        model(method(probe, torch.tensor([0, 1]), 0))
    if check_data:
        client_data(experiment, {"partition-id": 0, "num-partitions": experiment.num_clients})
