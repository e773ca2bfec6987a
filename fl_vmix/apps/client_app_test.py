"""The ClientApp called directly (no Ray, no SuperLink), on an image-folder dataset made in code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from fl_vmix.apps import client_app
from fl_vmix.apps.keys import (
    PUBLIC_SIMULATION_MASTER,
    NodeKeyError,
    create_key_file,
    derived_simulation_key,
    node_key,
)
from fl_vmix.data.export import export_client
from fl_vmix.experiment import ConfigError, Experiment, compose, experiment_from_run_config, to_run_config
from fl_vmix.factory import build_model, build_optimizer, build_privacy, client_data, initial_model
from fl_vmix.privacy.keyed import context_bytes, derive_subkey
from fl_vmix.runtime.flower_app import app_section
from fl_vmix.training.loops import train_epochs
from fl_vmix.training.obfuscation import obfuscate
from fl_vmix.training.seeds import seed_for


@pytest.fixture()
def experiment(tiny_experiment) -> Experiment:
    return tiny_experiment()


def message(content: RecordDict, message_type: str, node_id: int = 7) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def context(experiment: Experiment, partition_id: int = 0, node_config: dict | None = None) -> Context:
    config = (
        node_config
        if node_config is not None
        else {"partition-id": partition_id, "num-partitions": experiment.num_clients}
    )
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config=to_run_config(experiment))


def train_message(experiment: Experiment) -> tuple[Message, torch.nn.Module]:
    model = initial_model(experiment)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1, "local-epochs": 1})}
    )
    return message(content, "train"), model


def test_reply_holds_only_model_arrays_and_metrics(experiment):
    msg, model = train_message(experiment)
    ctx = context(experiment)
    reply = client_app.app(msg, ctx)
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert isinstance(reply.content["arrays"], ArrayRecord) and isinstance(reply.content["metrics"], MetricRecord)
    state = reply.content["arrays"].to_torch_state_dict()
    expected = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    assert all(isinstance(v, (int, float)) for v in reply.content["metrics"].values())
    # No tensor in the reply equals or embeds an image, clear or obfuscated, in any layout.
    data = client_data(experiment, dict(ctx.node_config))
    key = key_of(experiment, ctx)
    method = build_privacy(experiment.privacy, key)
    obfuscated = obfuscate(
        method, data.train_images, data.train_labels, data.train_ids, 0, vfe_window=8, dataset=data.dataset
    ).images
    clear = torch.from_numpy(data.train_images).float().flatten(1)
    image_vectors = [clear, clear / 255, obfuscated.flatten(1)]
    size = image_vectors[0].shape[1]
    for name, tensor in state.items():
        flat = tensor.float().flatten()
        if flat.numel() < size:
            continue
        windows = flat.unfold(0, size, 1)  # every contiguous run of one image's length
        for images in image_vectors:
            assert not torch.cdist(windows, images).min() < 1e-6, f"{name} embeds an image"


def test_model_saw_images_obfuscated_with_this_clients_key(experiment):
    msg, _ = train_message(experiment)
    ctx = context(experiment)
    reply = client_app.app(msg, ctx)
    got = reply.content["arrays"].to_torch_state_dict()

    def expected_with(key: bytes) -> dict:
        # An independent replay of a client round from the library pieces: protect, seed, train.
        data = client_data(experiment, dict(ctx.node_config))
        split = obfuscate(
            build_privacy(experiment.privacy, key),
            data.train_images,
            data.train_labels,
            data.train_ids,
            0,
            vfe_window=8,
            dataset=data.dataset,  # the client binds its data's identity into the shuffle
        )
        model = build_model(experiment, 3, 3, 32)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        optimizer = build_optimizer(experiment, model.parameters())
        torch.manual_seed(seed_for(experiment.seed, 0, 1))
        train_epochs(
            model,
            split.images,
            split.labels,
            optimizer,
            epochs=1,
            batch_size=experiment.batch_size,
            seed=seed_for(experiment.seed, 0, 1, 1),
        )
        return model.state_dict()

    own = expected_with(key_of(experiment, ctx))
    assert all(torch.equal(got[k], own[k]) for k in own), (
        "the update must come from images mixed with this client's key"
    )
    other = expected_with(bytes(range(32)))
    assert not all(torch.equal(got[k], other[k]) for k in other)


def key_of(experiment: Experiment, ctx: Context) -> bytes:
    """The key the ClientApp uses for this node: its simulation key, derived or from its key file."""
    return node_key(dict(ctx.node_config), experiment.seed, experiment.engine.simulation_keys)


@pytest.mark.parametrize("mode", ["random", "derived"])
def test_clients_have_distinct_stable_keys(tiny_experiment, mode):
    experiment = tiny_experiment(f"engine.simulation_keys={mode}")
    first, second = (key_of(experiment, context(experiment, partition)) for partition in (0, 1))
    assert first != second and len(first) == 32
    assert first == key_of(experiment, context(experiment, 0))  # stable across rounds and runs
    # That the server never sends them is checked on what a whole run puts on the wire: server_app_test.py.


def test_derived_simulation_keys_come_from_the_seed_and_the_partition_only(tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("FL_VMIX_KEY_DIR", str(tmp_path / "keys"))
    experiment = tiny_experiment()
    assert experiment.engine.simulation_keys == "derived", "the default: the same numbers on every machine"
    key = derived_simulation_key(0, 1)
    assert key == derive_subkey(PUBLIC_SIMULATION_MASTER, context_bytes("fl_vmix.simulation-key", 0, 1))
    assert key_of(experiment, context(experiment, 1)) == key
    assert derived_simulation_key(1, 1) != key and derived_simulation_key(0, 0) != key
    # The same key in a fresh interpreter (another process, as on another machine), without key files.
    code = "from fl_vmix.apps.keys import derived_simulation_key as d; print(d(0, 1).hex(), d(0, 2).hex())"
    env = {k: v for k, v in os.environ.items() if k not in ("FL_VMIX_KEY_DIR", "FLWR_HOME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == [key.hex(), derived_simulation_key(0, 2).hex()]
    assert not (tmp_path / "keys").exists(), "derived keys read and write no key file"


def test_deployment_node_reads_key_file_and_exported_data(experiment, tmp_path):
    data = client_data(experiment, {"partition-id": 1, "num-partitions": 2})
    folder = export_client(data, tmp_path / "client-1")
    key = create_key_file(folder / "client.key")
    node_config = {"data-path": str(folder), "key-file": str(folder / "client.key")}
    msg, _ = train_message(experiment)
    reply = client_app.app(msg, context(experiment, node_config=node_config))
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["partition-id"] == 1
    assert node_key(node_config) == key
    assert node_key(node_config, 0, "derived") == key, "a node's key file wins over derived simulation keys"


def test_missing_key_file_is_reported_with_the_fix(experiment, tmp_path):
    msg, _ = train_message(experiment)
    # Called directly the exception propagates; under a SuperNode Flower turns it into the error reply
    # the server logs and records (see the fault-tolerance simulation test).
    node_config = {"key-file": str(tmp_path / "absent.key"), "partition-id": 0, "num-partitions": 2}
    with pytest.raises(NodeKeyError, match="absent.key does not exist.*keygen"):
        client_app.app(msg, context(experiment, node_config=node_config))


def test_the_run_config_never_chooses_a_supernodes_key(tiny_experiment, tmp_path, monkeypatch):
    """A SuperNode without a key file refuses, whatever engine.simulation_keys the server sends; only the node's
    own config opts it into a simulation key. Simulated nodes (Flower gives them partition-id and num-partitions
    only) still follow the experiment."""
    monkeypatch.setenv("FL_VMIX_KEY_DIR", str(tmp_path / "keys"))
    experiment = tiny_experiment("engine.simulation_keys=derived")
    data = client_data(experiment, {"partition-id": 1, "num-partitions": 2})
    folder = export_client(data, tmp_path / "client-1")
    supernode = {"data-path": str(folder), "partition-id": 1, "num-partitions": 2}
    msg, _ = train_message(experiment)
    with pytest.raises(NodeKeyError, match=r"no key of its own.*keygen.*key-file=.*does not choose"):
        client_app.app(msg, context(experiment, node_config=supernode))
    with pytest.raises(NodeKeyError, match="no key of its own"):
        node_key(supernode, experiment.seed, "derived")
    with pytest.raises(NodeKeyError, match="no key of its own"):
        node_key({"data-path": str(folder)}, experiment.seed, "random")
    # The node's own opt-in: its simulation key, whatever the server says.
    assert node_key({**supernode, "simulation-keys": "derived"}, 0, "random") == derived_simulation_key(0, 1)
    random_key = node_key({**supernode, "simulation-keys": "random"}, 0, "derived")
    assert random_key != derived_simulation_key(0, 1) and (tmp_path / "keys" / "node-1.key").read_bytes() == random_key
    with pytest.raises(NodeKeyError, match="simulation-keys='yes' is invalid"):
        node_key({**supernode, "simulation-keys": "yes"})
    # A simulated node: the experiment chooses.
    assert node_key({"partition-id": 1, "num-partitions": 2}, 0, "derived") == derived_simulation_key(0, 1)


def test_key_folders_are_private_and_key_files_exactly_one_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_VMIX_KEY_DIR", str(tmp_path / "keys"))
    old = os.umask(0o022)
    try:
        node_key({"partition-id": 0, "num-partitions": 2}, 0, "random")
        create_key_file(tmp_path / "deploy" / "client-0" / "client.key")
    finally:
        os.umask(old)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "deploy" / "client-0").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / "node-0.key").stat().st_mode & 0o777 == 0o600
    for size in (16, 31, 33, 64):
        path = tmp_path / f"short-{size}.key"
        path.write_bytes(bytes(range(size)))
        with pytest.raises(NodeKeyError, match=f"holds {size} bytes, not the 32 .*keygen"):
            node_key({"key-file": str(path)})


@pytest.mark.parametrize("bias", [1.5, -1.5])
def test_evaluate_reports_loss_accuracy_and_examples(experiment, bias):
    # Closed form: with the last layer's weights at zero the logits are its bias (0, b, 0) for every image, so
    # the model predicts class 1 if b > 0, else class 0 (the first of a tie), and each example's loss is
    # log(2 + e^b) - b [y = 1]. Partition 1's test split holds 2, 3 and 2 images of classes 0, 1 and 2.
    model = initial_model(experiment)
    last = model.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, bias, 0.0]))
    msg = message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}), "evaluate"
    )
    reply = client_app.app(msg, context(experiment, partition_id=1))
    metrics = reply.content["metrics"]
    assert set(metrics) == {"loss", "accuracy", "num-examples", "uniform-weight", "partition-id"}
    labels = client_data(experiment, {"partition-id": 1, "num-partitions": 2}).test_labels
    assert sorted(np.bincount(labels).tolist()) == [2, 2, 3], "unequal classes: a wrong prediction shows"
    predicted = 1 if bias > 0 else 0
    expected_loss = float(np.mean([math.log(2 + math.exp(bias)) - (bias if y == 1 else 0.0) for y in labels]))
    assert metrics["num-examples"] == len(labels) and metrics["partition-id"] == 1
    assert metrics["accuracy"] == pytest.approx(float(np.mean(labels == predicted)), abs=1e-12)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_a_worker_keeps_its_clients_up_to_the_configured_bound(tiny_experiment):
    experiment = tiny_experiment("engine.client_cache=1")
    model = initial_model(experiment)
    msg = message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}), "evaluate"
    )
    first, second = context(experiment, 0), context(experiment, 1)
    client_app.app(msg, first)
    kept = client_app.client_for(experiment, first)
    assert client_app.client_for(experiment, first) is kept  # the same client: its protected data are reused
    client_app.app(msg, second)  # a second node in the same worker evicts the first (bound 1)
    assert client_app.client_for(experiment, first) is not kept


def test_a_cached_client_is_never_reused_for_another_experiment(tiny_experiment):
    sgd, adam = tiny_experiment("optimizer=sgd"), tiny_experiment()
    ctx = context(adam)
    assert client_app.client_for(adam, ctx) is client_app.client_for(adam, ctx)
    assert client_app.client_for(sgd, ctx) is not client_app.client_for(adam, ctx), "same data, other optimiser"


def test_flwr_run_without_overrides_uses_the_conf_defaults():
    assert experiment_from_run_config({"experiment": ""}) == compose()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"] == app_section(), "the checkout's Flower app must match the installed one"
    assert pyproject["tool"]["flwr"]["app"]["config"] == {"experiment": "", "overrides": ""}, (
        "conf/ must stay the one source of defaults"
    )


def test_flwr_run_overrides_compose_the_conf():
    sent = {"experiment": "", "overrides": "num_rounds=2 'dataset.data_fraction=0.05' privacy=none"}
    assert experiment_from_run_config(sent) == compose(["num_rounds=2", "dataset.data_fraction=0.05", "privacy=none"])
    with pytest.raises(ConfigError, match="both 'experiment' and 'overrides'"):
        experiment_from_run_config({"experiment": json.dumps(compose().to_dict()), "overrides": "num_rounds=2"})
    with pytest.raises(ConfigError, match="overrides=model=transformer"):
        experiment_from_run_config({"overrides": "model=transformer"})


def test_central_evaluation_uses_a_server_key_on_the_test_split(experiment):
    from fl_vmix.apps.central import CentralEvaluator

    model = initial_model(experiment)
    evaluator = CentralEvaluator(experiment, model)
    metrics = evaluator(ArrayRecord(model.state_dict()))
    assert set(metrics) == {"loss", "accuracy"} and len(evaluator.split.labels) == 18
    assert evaluator.split.vfe_corrected > 0
