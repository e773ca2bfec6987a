import logging
import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from opacus.accountants import RDPAccountant

from fl_vmix.apps import client_app
from fl_vmix.apps.config import experiment_to_run_config
from fl_vmix.apps.server_app import initial_model
from fl_vmix.evaluation.training_dp import ACCOUNTANT_STATE_KEY, DPSGD, CentralDP, make_opacus_compatible
from fl_vmix.models import build_model
from fl_vmix.privacy.methods import build_privacy_method


def train_message(arrays: ArrayRecord, server_round: int, extra: dict | None = None) -> Message:
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id=str(server_round),
                        created_at=time.time(), ttl=600, message_type="train")
    config = ConfigRecord({"server-round": server_round, "local-epochs": 1, **(extra or {})})
    return Message(content=RecordDict({"arrays": arrays, "config": config}), metadata=metadata)


def test_dp_sgd_accountant_accumulates_across_rounds(tiny_experiment):
    cfg = tiny_experiment("privacy=dp_sgd", "privacy.noise_multiplier=1.1")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config=experiment_to_run_config(cfg))
    arrays = ArrayRecord(initial_model(cfg).state_dict())
    first = client_app.app(train_message(arrays, 1), context)
    second = client_app.app(train_message(first.content["arrays"], 2), context)
    eps1, eps2 = first.content["metrics"]["epsilon"], second.content["metrics"]["epsilon"]
    assert 0 < eps1 < eps2, "the second round's epsilon must include the first round's steps"
    # The kept history is exactly Opacus' accountant over both rounds' steps.
    history = [tuple(h) for h in __import__("json").loads(context.state.config_records[ACCOUNTANT_STATE_KEY]["history"])]
    accountant = RDPAccountant()
    accountant.history = history
    assert accountant.get_epsilon(cfg["privacy"]["delta"]) == pytest.approx(eps2)
    steps = sum(h[2] for h in history)
    n_train = first.content["metrics"]["num-examples"]
    assert steps == 2 * -(-n_train // cfg["batch_size"])  # one accounted step per expected batch, both rounds
    assert set(second.content["arrays"].keys()) == set(arrays.keys()), "reply holds the plain model's arrays"


def test_batchnorm_models_are_fixed_for_opacus_and_it_is_said(caplog):
    model = build_model("resnet18", num_classes=10)
    with caplog.at_level(logging.WARNING, logger="fl_vmix.dp"):
        fixed = make_opacus_compatible(model)
    assert "BatchNorm -> GroupNorm" in caplog.text
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fixed.modules())
    cnn = build_model("cnn", num_classes=10)
    assert make_opacus_compatible(cnn) is cnn


def test_central_dp_clipping_mod_only_acts_when_asked(tiny_experiment):
    cfg = tiny_experiment("privacy=central_dp")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config=experiment_to_run_config(cfg))
    model = initial_model(cfg)
    arrays = ArrayRecord(model.state_dict())

    def update_norm(reply: Message) -> float:
        new = reply.content["arrays"].to_torch_state_dict()
        old = model.state_dict()
        return float(torch.sqrt(sum((new[k].float() - old[k].float()).square().sum() for k in old)))

    unclipped = client_app.app(train_message(arrays, 1), context)
    clipped = client_app.app(train_message(arrays, 1, {"clipping_norm": 0.01}), context)
    assert update_norm(unclipped) > 0.05
    assert update_norm(clipped) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("dp_sgd", dict(noise_multiplier=0.0), "noise_multiplier must be .*> 0"),
        ("dp_sgd", dict(max_grad_norm=-1.0), "max_grad_norm must be .*> 0"),
        ("central_dp", dict(clipping_norm=0), "clipping_norm must be .*> 0"),
        ("central_dp", dict(delta=1.5), "delta must be in"),
    ],
)
def test_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_privacy_method(name, **params)


def test_training_level_methods_leave_images_alone():
    images = torch.rand(2, 3, 8, 8)
    for method in (DPSGD(), CentralDP()):
        assert torch.equal(method(images, torch.tensor([0, 1])), images)
        assert method.level == "training"
