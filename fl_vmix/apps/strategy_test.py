"""RecordingStrategy wraps any Flower strategy: ordered aggregation, recorded replies and failures, server DP."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx

from fl_vmix.apps.dp import wrap_central_dp
from fl_vmix.apps.strategy import STRATEGIES, RecordingStrategy, aggregate_without_partition, build_strategy
from fl_vmix.experiment import STRATEGY_NAMES, STRATEGY_PARAMS, compose
from fl_vmix.privacy.training_level import CentralDP
from fl_vmix.recording import RunRecorder


def request(node_id: int, server_round: int = 1) -> Message:
    metadata = Metadata(
        run_id=1, message_id=f"m{node_id}", src_node_id=0, dst_node_id=node_id, reply_to_message_id="",
        group_id=str(server_round), created_at=time.time(), ttl=600, message_type="train",
    )  # fmt: skip
    return Message(content=RecordDict(), metadata=metadata)


def reply(partition: int, value: float, examples: int, node_id: int | None = None) -> Message:
    arrays = ArrayRecord({"w": torch.full((3,), value)})
    metrics = MetricRecord(
        {"train_loss": value, "num-examples": examples, "partition-id": partition, "uniform-weight": 1}
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=request(node_id or 10 + partition))


def failure(node_id: int) -> Message:
    return Message(Error(code=1, reason="injected failure"), reply_to=request(node_id))


class Configured(FedAvg):
    """FedAvg with fl_vmix's metric aggregation that, without a Flower runtime to address messages,
    configures a round with ready-made messages to nodes 11 and 12."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(min_available_nodes=1, train_metrics_aggr_fn=aggregate_without_partition, **kwargs)  # type: ignore[arg-type]
        self.configured: list[tuple[int, ConfigRecord]] = []

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.configured.append((server_round, config))
        return [request(11, server_round), request(12, server_round)]


class Spy(Configured):
    """Also remembers the order in which it was handed the replies."""

    seen: list[int] = []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        replies = list(replies)
        self.seen = [int(next(iter(m.content.metric_records.values()))["partition-id"]) for m in replies]
        return super().aggregate_train(server_round, replies)


@pytest.fixture()
def recorder(tmp_path: Path) -> RunRecorder:
    return RunRecorder(tmp_path, {"experiment": "test"})


def test_replies_reach_the_wrapped_strategy_in_partition_order(recorder):
    spy = Spy()
    strategy = RecordingStrategy(spy, recorder, min_success_fraction=0.5)
    arrays, metrics = strategy.aggregate_train(1, [reply(2, 3.0, 30), reply(0, 1.0, 10), reply(1, 2.0, 20)])
    assert spy.seen == [0, 1, 2]
    # Oracle: the example-weighted mean, computed by hand.
    expected = (1.0 * 10 + 2.0 * 20 + 3.0 * 30) / 60
    assert arrays is not None and np.allclose(arrays["w"].numpy(), expected)
    assert metrics is not None and metrics["train_loss"] == pytest.approx(expected) and "partition-id" not in metrics
    record = recorder.round(1)
    assert record["train_ok"] == 3 and record["train_failed"] == 0
    assert record["clients"]["1"]["train_loss"] == 2.0 and record["train"]["train_loss"] == pytest.approx(expected)


def test_failures_are_recorded_and_too_many_stop_the_run(recorder, tmp_path):
    strategy = RecordingStrategy(FedAvg(min_available_nodes=1), recorder, min_success_fraction=0.5)
    strategy.aggregate_train(1, [reply(0, 1.0, 10), failure(11)])
    assert recorder.round(1)["train_failed"] == 1 and "injected failure" in recorder.round(1)["failures"][0]
    with pytest.raises(RuntimeError, match=r"round 2: only 1 of 3 clients succeeded in train.*injected failure"):
        strategy.aggregate_train(2, [reply(0, 1.0, 10), failure(11), failure(12)])
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert records[-1]["round"] == 2 and records[-1]["train_failed"] == 2, "the failing round is on disk"


def test_a_reply_missing_at_the_rounds_timeout_is_a_failure(recorder):
    """Flower's round loop passes on only the replies that came before its timeout: the node that never answered
    (a SuperNode that crashed and came back loses the message it had taken) must still count as failed."""
    strategy = RecordingStrategy(Configured(), recorder, min_success_fraction=0.5)
    weights = ArrayRecord({"w": torch.zeros(3)})
    strategy.configure_train(1, weights, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    strategy.aggregate_train(1, [reply(1, 1.0, 10)])  # from node 11; node 12 never answered
    record = recorder.round(1)
    assert record["train_ok"] == 1 and record["train_failed"] == 1
    assert record["failures"] == [
        "train: node 12: no reply before the round's timeout (engine.round_timeout_s); a SuperNode that crashed and "
        "came back loses the message it had taken"
    ]
    strict = RecordingStrategy(Configured(), recorder, min_success_fraction=0.6)
    strict.configure_train(2, weights, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"round 2: only 1 of 2 clients succeeded in train.*node 12: no reply"):
        strict.aggregate_train(2, [reply(1, 1.0, 10)])


def test_an_error_the_superlink_returns_for_an_offline_node_names_that_node_once(recorder):
    """The SuperLink signs the error reply for an unavailable node with its own id: the failure is the node's, and
    the node is not counted again as missing."""
    strategy = RecordingStrategy(Configured(), recorder, min_success_fraction=0.5)
    strategy.configure_train(1, ArrayRecord({"w": torch.zeros(3)}), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    metadata = Metadata(
        run_id=1, message_id="", src_node_id=1, dst_node_id=1, reply_to_message_id="m12", group_id="1",
        created_at=time.time(), ttl=600, message_type="train",
    )  # fmt: skip
    unavailable = make_message(metadata=metadata, error=Error(code=3, reason="Node Unavailable"))
    strategy.aggregate_train(1, [reply(1, 1.0, 10), unavailable])
    assert recorder.round(1)["failures"] == ["train: node 12: Node Unavailable"]


def test_the_wrapper_delegates_configuration_and_times_the_round(recorder):
    spy = Spy()
    strategy = RecordingStrategy(spy, recorder, min_success_fraction=0.5)
    config = ConfigRecord({"local-epochs": 2})
    messages = list(strategy.configure_train(3, ArrayRecord({"w": torch.zeros(3)}), config, grid=None))  # type: ignore[arg-type]
    assert [m.metadata.dst_node_id for m in messages] == [11, 12] and spy.configured == [(3, config)]
    assert "started" in recorder.round(3)


def test_central_dp_wrapped_strategies_record_the_servers_epsilon(recorder):
    experiment = compose(["privacy=central_dp", "num_clients=2", "privacy.noise_multiplier=1.0"])
    assert isinstance(build_strategy(experiment), DifferentialPrivacyClientSideFixedClipping)
    # The same wrapping around a strategy that can configure rounds without a Flower runtime.
    dp = wrap_central_dp(Configured(weighted_by_key="uniform-weight"), CentralDP(noise_multiplier=1.0), num_clients=2)
    strategy = RecordingStrategy(dp, recorder, min_success_fraction=0.5)
    spent = []
    for server_round in (1, 2):
        list(strategy.configure_train(server_round, ArrayRecord({"w": torch.zeros(3)}), ConfigRecord({}), grid=None))  # type: ignore[arg-type]
        strategy.aggregate_train(server_round, [reply(0, 0.1, 10), reply(1, 0.2, 20)])
        spent.append(recorder.round(server_round)["server_dp"])
    assert 0 < spent[0]["epsilon"] < spent[1]["epsilon"] and spent[1]["releases"] == 2 and spent[1]["delta"] == 1e-5


def test_plain_strategies_take_the_experiments_settings():
    fedprox = build_strategy(compose(["strategy=fedprox", "strategy.proximal_mu=0.5", "fraction_evaluate=0"]))
    assert isinstance(fedprox, FedProx) and fedprox.proximal_mu == 0.5
    assert fedprox.min_evaluate_nodes == 0 and fedprox.min_available_nodes == 5


def test_the_strategy_settings_the_experiment_accepts_are_those_of_flowers_classes():
    assert set(STRATEGIES) == set(STRATEGY_NAMES) == set(STRATEGY_PARAMS)
    base = set(inspect.signature(FedAvg).parameters)
    for name, cls in STRATEGIES.items():
        assert set(inspect.signature(cls).parameters) - base == set(STRATEGY_PARAMS[name]), name
    fedavgm = build_strategy(compose(["strategy=fedavgm", "strategy.server_momentum=0.5"]))
    assert fedavgm.server_momentum == 0.5 and fedavgm.server_learning_rate == 1.0  # type: ignore[attr-defined]


class TwoNodes:
    """The one thing FedAvg's configure_train asks of a grid: which nodes are there."""

    def get_node_ids(self) -> list[int]:
        return [10, 11]


def test_central_dp_as_the_app_builds_it_averages_clients_of_unequal_size_uniformly(monkeypatch):
    """Flower's accountant counts one client's data as sensitivity C/n: the mean must weigh every client equally,
    whatever its partition size. Oracle: the plain mean of the (unclipped: norm < C) replies plus the noise Flower
    draws from NumPy's global RNG, regenerated here from the same seed."""
    sigma, clip = 1.0, 10.0
    strategy = build_strategy(
        compose(["privacy=central_dp", "num_clients=2", f"privacy.noise_multiplier={sigma}",
                 f"privacy.clipping_norm={clip}"])
    )  # fmt: skip
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what Flower's ServerApp runtime sets: messages come from it
        monkeypatch.setattr(TaskIdentity, name, 1)
    start = ArrayRecord({"w": torch.zeros(3)})
    configured = list(strategy.configure_train(1, start, ConfigRecord({}), TwoNodes()))  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in configured) == [10, 11]
    replies = [reply(0, 1.0, 300, node_id=10), reply(1, 0.0, 100, node_id=11)]  # 3:1 in examples
    np.random.seed(1234)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.random.seed(1234)
    noise = np.random.normal(0, sigma * clip / 2, 3).astype(np.float32)
    mean = arrays["w"].numpy() - noise
    np.testing.assert_allclose(mean, [0.5] * 3, atol=1e-5)  # weighted by examples it would be 0.75
