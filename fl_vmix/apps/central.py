"""Optional central evaluation on the server (``central_eval=true``).

The server holds no client key, so it evaluates the global model on the dataset's test split
protected with the same privacy method under a key of its own: a model that learned from images
shuffled with many client keys should not depend on any one of them, and this measures exactly
that. It needs the test split on the server, so it is for simulations and for servers that hold a
public test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl_vmix.apps.task import build_image_privacy, evaluate_model, obfuscate

SERVER_EVALUATION_KEY = b"fl_vmix server evaluation key v1"  # public by design: not a client key


class CentralEvaluator:
    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module, max_images: int = 2000) -> None:
        from fl_vmix.data import load_dataset

        dataset = cfg["dataset"]
        data = load_dataset(dataset["name"], dataset.get("root"), "test", cache_dir=dataset.get("cache_dir"))
        index = np.linspace(0, len(data.labels) - 1, min(max_images, len(data.labels))).astype(np.int64)
        transform = build_image_privacy(cfg["privacy"], SERVER_EVALUATION_KEY)
        self.split = obfuscate(transform, np.asarray(data.images[index]), np.asarray(data.labels[index]), data.ids[index], epoch=0,
                               region_size=int(cfg["privacy"].get("region_size", 8)))
        self.model = model

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate_model(self.model, self.split.images, self.split.labels)
