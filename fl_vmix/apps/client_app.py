"""fl_vmix ClientApp: each client obfuscates its own images with its own key, then trains and evaluates.

The reply carries the model's arrays and scalar metrics only; images and the key stay on the node.
In the simulation engine a worker process serves many rounds, so a client's loaded and obfuscated
data are kept per process; on the Deployment Engine every message runs in a fresh process and the
client reloads its exported folder from disk.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_vmix.apps.config import experiment_from_run_config
from fl_vmix.apps.keys import node_key
from fl_vmix.apps.task import (
    ObfuscatedSplit,
    build_image_privacy,
    evaluate_model,
    model_from_config,
    normalise,
    obfuscate,
    optimizer_from_config,
    seed_for,
    train_epochs,
)
from fl_vmix.apps.validate import client_data_for
from fl_vmix.evaluation.training_dp import DPSGD, UNIFORM_WEIGHT_KEY, optional_fixedclipping_mod, train_dp_sgd


@dataclass
class ClientState:
    partition_id: int
    transform: Any
    train: ObfuscatedSplit
    test: ObfuscatedSplit
    raw: Any  # the client's clear data (ClientData), needed again only in dynamic mode
    num_classes: int
    dynamic: bool


_STATES: dict[tuple[str, int, bytes], ClientState] = {}


def _config_digest(cfg: dict[str, Any]) -> str:
    relevant = {k: cfg[k] for k in ("dataset", "partition", "privacy", "num_clients", "seed")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def client_state(cfg: dict[str, Any], context: Context) -> ClientState:
    node_config = dict(context.node_config)
    key = node_key(node_config)
    data = client_data_for(cfg, node_config)
    cache_key = (_config_digest(cfg), data.partition_id, hashlib.sha256(key).digest())
    if cache_key not in _STATES:
        transform = build_image_privacy(cfg["privacy"], key)
        region = int(cfg["privacy"].get("region_size", 8))
        _STATES[cache_key] = ClientState(
            partition_id=data.partition_id,
            transform=transform,
            train=obfuscate(transform, data.train_images, data.train_labels, data.train_ids, epoch=0, region_size=region),
            test=obfuscate(transform, data.test_images, data.test_labels, data.test_ids, epoch=0, region_size=region),
            raw=data,
            num_classes=len(data.classes),
            dynamic=cfg["privacy"].get("mode", cfg["privacy"].get("noise_mode")) == "dynamic",
        )
    return _STATES[cache_key]


def _model(cfg: dict[str, Any], state: ClientState, msg: Message) -> torch.nn.Module:
    images = state.train.images if len(state.train.images) else state.test.images
    model = model_from_config(cfg, state.num_classes, images.shape[1], images.shape[-1])
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _maybe_fail(cfg: dict[str, Any], partition_id: int, server_round: int) -> None:
    faults = cfg.get("faults") or {}
    if partition_id in (faults.get("fail_partitions") or []) and server_round in (faults.get("fail_rounds") or [server_round]):
        raise RuntimeError(f"injected failure on partition {partition_id} in round {server_round} (config faults.fail_partitions)")


app = ClientApp(mods=[optional_fixedclipping_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = experiment_from_run_config(dict(context.run_config))
    config = msg.content["config"]
    server_round = int(config.get("server-round", 1))
    state = client_state(cfg, context)
    _maybe_fail(cfg, state.partition_id, server_round)
    train_split = state.train
    if state.dynamic:  # a new shuffle every round: the model never sees the same arrangement twice
        raw = state.raw
        region = int(cfg["privacy"].get("region_size", 8))
        train_split = obfuscate(state.transform, raw.train_images, raw.train_labels, raw.train_ids, epoch=server_round, region_size=region)
    model = _model(cfg, state, msg)
    optimizer = optimizer_from_config(model.parameters(), cfg["optimizer"])
    torch.manual_seed(seed_for(int(cfg["seed"]), state.partition_id, server_round))
    start = time.perf_counter()
    epochs = int(config.get("local-epochs", cfg["local_epochs"]))
    batch_seed = seed_for(int(cfg["seed"]), state.partition_id, server_round, 1)
    if isinstance(state.transform, DPSGD):
        metrics = train_dp_sgd(model, normalise(train_split.images), train_split.labels, optimizer, state.transform, context,
                               epochs=epochs, batch_size=int(cfg["batch_size"]), seed=batch_seed)
    else:
        metrics = train_epochs(model, train_split, optimizer, epochs=epochs, batch_size=int(cfg["batch_size"]), seed=batch_seed,
                               proximal_mu=float(config.get("proximal-mu", 0.0)))
        epsilon = state.transform.total_epsilon(server_round) if state.dynamic else state.transform.epsilon
        if epsilon is not None:
            metrics["epsilon"] = float(epsilon)  # local DP on images: per image, composed over re-releases
    metrics.update(
        {
            "num-examples": len(train_split.labels),
            UNIFORM_WEIGHT_KEY: 1,  # central DP's accountant needs uniform aggregation weights
            "partition-id": state.partition_id,
            "vfe_corrected": train_split.vfe_corrected,
            "vfe_reference": train_split.vfe_reference,
            "ssim": train_split.ssim,
            "psnr": train_split.psnr,
            "obfuscation_s": train_split.seconds,
            "vfe_unreached_fraction": train_split.unreached / max(len(train_split.labels), 1),
            "train_time_s": time.perf_counter() - start,
        }
    )
    # Opacus wraps the model; the reply carries the plain model's arrays.
    trained = getattr(model, "_module", model)
    content = RecordDict({"arrays": ArrayRecord(trained.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = experiment_from_run_config(dict(context.run_config))
    state = client_state(cfg, context)
    model = _model(cfg, state, msg)
    result = evaluate_model(model, state.test.images, state.test.labels)
    metrics = {**result, "num-examples": len(state.test.labels), UNIFORM_WEIGHT_KEY: 1, "partition-id": state.partition_id}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
