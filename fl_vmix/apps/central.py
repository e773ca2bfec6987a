"""Optional central evaluation on the server (``central_eval=true``).

The server holds no client key, so it evaluates the global model on the dataset's test split
protected with the same privacy method under a key of its own: a model that learned from images
shuffled with many client keys should not depend on any one of them, and this measures exactly
that. It needs the test split on the server, so it is for simulations and for servers that hold a
public test set. It runs on the experiment's device (``device``, ``amp``) as the clients do.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl_vmix.data import load_dataset
from fl_vmix.data.client import DatasetIdentity
from fl_vmix.data.transforms import resize_images
from fl_vmix.experiment import Experiment
from fl_vmix.factory import build_privacy, compute_for
from fl_vmix.training.loops import evaluate_model
from fl_vmix.training.obfuscation import obfuscate

SERVER_EVALUATION_KEY = b"fl_vmix server evaluation key v1"  # public by design: not a client key


class CentralEvaluator:
    def __init__(self, experiment: Experiment, model: torch.nn.Module, max_images: int | None = None) -> None:
        """``max_images``: evenly spaced test images to evaluate on (``None``: the whole test split)."""
        self.compute = compute_for(experiment)
        dataset = experiment.dataset
        data = load_dataset(dataset.name, dataset.root, "test", cache_dir=dataset.cache_dir)
        count = len(data.labels) if max_images is None else min(max_images, len(data.labels))
        index = np.linspace(0, len(data.labels) - 1, count).astype(np.int64)
        method = build_privacy(experiment.privacy, SERVER_EVALUATION_KEY)
        self.split = obfuscate(
            method,
            resize_images(np.asarray(data.images[index]), dataset.image_size),
            np.asarray(data.labels[index]),
            data.ids[index],
            epoch=0,
            vfe_window=experiment.privacy.region_size,
            device=None if self.compute.device.type == "cpu" else self.compute.device,
            dataset=DatasetIdentity.of(data),
        )
        self.model = copy.deepcopy(model).to(self.compute.device)  # the caller's model stays on the CPU

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate_model(self.model, self.split.images, self.split.labels, compute=self.compute)
