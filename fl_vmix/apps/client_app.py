"""fl_vmix ClientApp: a thin adapter from Flower messages to the node's :class:`LocalClient`.

Each client protects its own images with its own key, then trains and evaluates
(:mod:`fl_vmix.training.client`) on the experiment's device (``device``, resolved in this process: in
simulation Ray shows a client only the GPU share it reserved). The reply carries the model's arrays
and scalar metrics only; images and the key stay on the node. In the simulation engine a worker
process serves many rounds and nodes, so it keeps its clients (with their protected data) in a
bounded cache (``engine.client_cache``); on the Deployment Engine every message runs in a fresh
process, which reloads the node's exported folder from disk. A ``query`` message asks the node which
partition it holds (the server orders its nodes by partition for reproducible sampling).
"""

from __future__ import annotations

import hashlib
import json

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_vmix.apps.client_state import state_store
from fl_vmix.apps.dp import (
    UNIFORM_WEIGHT_KEY,
    load_accountant_history,
    optional_fixedclipping_mod,
    save_accountant_history,
)
from fl_vmix.apps.keys import node_key
from fl_vmix.experiment import Experiment, experiment_from_run_config
from fl_vmix.factory import client_data, local_client
from fl_vmix.privacy.training_level import DPSGD
from fl_vmix.training.client import BoundedCache, LocalClient
from fl_vmix.training.device import set_threads

_CLIENTS: BoundedCache[tuple[str, str, bytes], LocalClient] = BoundedCache(1)


def client_for(experiment: Experiment, context: Context) -> LocalClient:
    """This node's client for ``experiment``, from the process's cache when it already protected its data."""
    node_config = dict(context.node_config)
    key = node_key(node_config, experiment.seed, experiment.engine.simulation_keys)
    # The whole experiment: a client holds its model and optimiser settings too, not only its data.
    digest = hashlib.sha256(json.dumps(experiment.to_dict(), sort_keys=True).encode()).hexdigest()
    node = json.dumps(node_config, sort_keys=True, default=str)
    _CLIENTS.resize(experiment.engine.client_cache)
    return _CLIENTS.get(
        (digest, node, hashlib.sha256(key).digest()),
        lambda: local_client(experiment, client_data(experiment, node_config), key),
    )


def _number(config: ConfigRecord, key: str, default: float) -> float:
    """A number the server put in the message's config (round, local epochs, FedProx's ``proximal-mu``)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"the server sent {key}={value!r}, not a number: is the ServerApp an fl_vmix one?")
    return value


def _labels(client: LocalClient) -> dict[str, int]:
    # Every reply carries the partition (the server orders replies by it) and a uniform weight (central DP).
    return {UNIFORM_WEIGHT_KEY: 1, "partition-id": client.partition_id}


app = ClientApp(mods=[optional_fixedclipping_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    experiment = experiment_from_run_config(context.run_config)
    set_threads(experiment.engine.threads_per_client)
    config = msg.content.config_records["config"]
    server_round = int(_number(config, "server-round", 1))
    client = client_for(experiment, context)
    if experiment.faults.fails(client.partition_id, server_round):
        raise RuntimeError(
            f"injected failure on partition {client.partition_id} in round {server_round} (config "
            "faults.fail_partitions)"
        )
    history = load_accountant_history(context)
    store = None
    if experiment.privacy.method == DPSGD.name:
        # A resumed run starts with empty node state: the history of the round before comes from the file.
        store = state_store(dict(context.node_config), dict(config), client.partition_id)
        stored = store.history_before(server_round) if store is not None else None
        if stored is not None:
            history = stored
    result = client.train(
        msg.content.array_records["arrays"].to_torch_state_dict(),
        server_round,
        epochs=int(_number(config, "local-epochs", experiment.local_epochs)),
        proximal_mu=float(_number(config, "proximal-mu", 0.0)),
        accountant_history=history,
    )
    if result.accountant_history is not None:
        save_accountant_history(context, result.accountant_history)
        if store is not None:
            store.save(server_round, result.accountant_history)
    metrics = MetricRecord({**result.metrics, **_labels(client)})
    return Message(content=RecordDict({"arrays": ArrayRecord(result.weights), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    experiment = experiment_from_run_config(context.run_config)
    set_threads(experiment.engine.threads_per_client)
    client = client_for(experiment, context)
    result = client.evaluate(msg.content.array_records["arrays"].to_torch_state_dict())
    return Message(content=RecordDict({"metrics": MetricRecord({**result.metrics, **_labels(client)})}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The partition this node holds (its node config in simulation, its exported folder on a SuperNode)."""
    experiment = experiment_from_run_config(context.run_config)
    client = client_for(experiment, context)
    return Message(content=RecordDict({"metrics": MetricRecord({"partition-id": client.partition_id})}), reply_to=msg)
