"""Central DP's client-side clipping mod acts only when the server's DP wrapper asks; DP-SGD's
accountant lives in the node's context.state between rounds."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from fl_vmix.apps import client_app
from fl_vmix.apps.dp import ACCOUNTANT_STATE_KEY, load_accountant_history
from fl_vmix.experiment import to_run_config
from fl_vmix.factory import initial_model


def train_message(arrays: ArrayRecord, server_round: int, extra: dict | None = None) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=600,
        message_type="train",
    )
    config = ConfigRecord({"server-round": server_round, "local-epochs": 1, **(extra or {})})
    return Message(content=RecordDict({"arrays": arrays, "config": config}), metadata=metadata)


def node_context(experiment) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=to_run_config(experiment),
    )


def test_dp_sgd_accountant_is_kept_in_the_node_state(tiny_experiment):
    experiment = tiny_experiment("privacy=dp_sgd", "privacy.noise_multiplier=1.1")
    context = node_context(experiment)
    arrays = ArrayRecord(initial_model(experiment).state_dict())
    assert load_accountant_history(context) == ()
    first = client_app.app(train_message(arrays, 1), context)
    after_one = load_accountant_history(context)
    second = client_app.app(train_message(first.content["arrays"], 2), context)
    assert ACCOUNTANT_STATE_KEY in context.state.config_records
    assert sum(h[2] for h in load_accountant_history(context)) == 2 * sum(h[2] for h in after_one)
    assert 0 < first.content["metrics"]["epsilon"] < second.content["metrics"]["epsilon"]


def test_central_dp_clipping_mod_only_acts_when_asked(tiny_experiment):
    experiment = tiny_experiment("privacy=central_dp")
    context = node_context(experiment)
    model = initial_model(experiment)
    arrays = ArrayRecord(model.state_dict())

    def update_norm(reply: Message) -> float:
        new = reply.content["arrays"].to_torch_state_dict()
        old = model.state_dict()
        return float(torch.sqrt(sum((new[k].float() - old[k].float()).square().sum() for k in old)))

    unclipped = client_app.app(train_message(arrays, 1), context)
    clipped = client_app.app(train_message(arrays, 1, {"clipping_norm": 0.01}), context)
    assert update_norm(unclipped) > 0.05
    assert update_norm(clipped) == pytest.approx(0.01, rel=1e-3)
