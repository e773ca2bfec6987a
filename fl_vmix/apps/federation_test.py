"""The server and the nodes it has: waiting for them, adapting to their number, partition-ordered sampling,
and a resumed run's round numbers through Flower's own round loop."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fl_vmix.apps import client_app, federation
from fl_vmix.apps.client_app_test import context, message
from fl_vmix.apps.federation import (
    PartitionOrderedGrid,
    fit_to_federation,
    ordered_grid,
    query_partitions,
    wait_for_nodes,
)
from fl_vmix.apps.strategy import RecordingStrategy, aggregate_without_partition
from fl_vmix.apps.strategy_test import reply
from fl_vmix.experiment import compose
from fl_vmix.recording import RunRecorder


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity Flower's ServerApp runtime gives its process (messages are addressed from it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid(Grid):
    """Nodes with random ids holding partitions; answers partition queries and train/evaluate messages
    (each node replies with weights equal to its partition, so aggregation is checkable)."""

    def __init__(self, partitions: dict[int, int], join_after: dict[int, float] | None = None) -> None:
        self.partitions, self.join_after, self.created = partitions, join_after or {}, time.monotonic()
        self.sent: list[Message] = []
        self.rounds_sent: list[int] = []  # the server-round of each train message, read when it is sent

    def get_node_ids(self) -> Iterable[int]:
        age = time.monotonic() - self.created
        return [n for n in self.partitions if self.join_after.get(n, 0.0) <= age]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            if msg.metadata.message_type == "train":
                self.rounds_sent.append(int(msg.content["config"]["server-round"]))  # type: ignore[arg-type]
            partition = self.partitions[msg.metadata.dst_node_id]
            if msg.metadata.message_type == "query":
                content = RecordDict({"metrics": MetricRecord({"partition-id": partition})})
                replies.append(Message(content, reply_to=_addressed(msg)))
            elif msg.metadata.message_type == "train":
                replies.append(reply(partition, float(partition), 10, node_id=msg.metadata.dst_node_id))
            else:
                metrics = MetricRecord({"loss": 1.0, "accuracy": 0.5, "num-examples": 5, "partition-id": partition})
                replies.append(Message(RecordDict({"metrics": metrics}), reply_to=_addressed(msg)))
        return replies

    def set_run(self, run):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _addressed(msg: Message) -> Message:
    """A sent message as the SuperLink delivers it (with a message id, which replies refer to)."""
    from fl_vmix.apps.strategy_test import request

    addressed = request(msg.metadata.dst_node_id)
    addressed.metadata.message_type = msg.metadata.message_type
    return addressed


def test_the_server_waits_for_the_nodes_it_needs_and_no_longer_than_the_federation_grows(monkeypatch):
    monkeypatch.setattr(federation, "SETTLE_S", 0.3)
    grid = FakeGrid({7: 0, 9: 1, 3: 2}, join_after={3: 0.2})
    assert wait_for_nodes(grid, 3, wait_s=5, settle_s=0.3, poll_s=0.05) == [3, 7, 9]
    start = time.monotonic()
    assert wait_for_nodes(FakeGrid({7: 0, 9: 1}), 5, wait_s=5, settle_s=0.3, poll_s=0.05) == [7, 9]
    assert time.monotonic() - start < 2, "two nodes and no more coming: go on with them"
    with pytest.raises(RuntimeError, match="no node connected within 0 s.*num-supernodes"):
        wait_for_nodes(FakeGrid({}), 1, wait_s=0.2, settle_s=0.1, poll_s=0.05)


def test_the_experiment_adapts_to_the_federation_and_says_so(caplog):
    experiment = compose()
    with caplog.at_level(logging.WARNING, logger="fl_vmix.server"):
        adapted = fit_to_federation(experiment, 2)
    assert adapted.num_clients == 2 and adapted.replace(num_clients=5) == experiment
    assert "the federation has 2 node(s) but the experiment asks for num_clients=5: running with 2" in caplog.text
    assert "--federation-config 'num-supernodes=5'" in caplog.text
    assert fit_to_federation(experiment, 5) is experiment


def test_seeded_sampling_picks_the_same_partitions_whatever_the_node_ids():
    picked = []
    for _ in range(3):  # three "runs": the same partitions under new random node ids each time
        ids = random.Random().sample(range(1, 1 << 40), 6)
        grid = FakeGrid(dict(zip(ids, range(6), strict=True)))
        ordered = ordered_grid(grid, compose(["num_clients=6", "fraction_train=0.5"]), list(grid.get_node_ids()))
        assert isinstance(ordered, PartitionOrderedGrid)
        random.seed(0)
        sampled, _ = sample_nodes(ordered, 6, 3)
        picked.append(sorted(grid.partitions[n] for n in sampled))
    assert picked[0] == picked[1] == picked[2]
    everyone = FakeGrid({5: 0, 6: 1})
    assert ordered_grid(everyone, compose(["num_clients=2"]), [5, 6]) is everyone, "no query when all take part"
    assert not everyone.sent


def test_a_node_answers_which_partition_it_holds(tiny_experiment):
    experiment = tiny_experiment()
    msg = message(RecordDict(), "query")
    answer = client_app.app(msg, context(experiment, partition_id=1))
    assert not answer.has_error(), answer.error
    assert answer.content["metrics"]["partition-id"] == 1
    assert query_partitions(FakeGrid({11: 1, 42: 0}), [11, 42]) == {11: 1, 42: 0}


def test_a_resumed_run_counts_its_real_rounds_through_flowers_loop(tmp_path):
    recorder = RunRecorder(tmp_path, {"experiment": "unit"})
    base = FedAvg(min_available_nodes=2, train_metrics_aggr_fn=aggregate_without_partition,
                  evaluate_metrics_aggr_fn=aggregate_without_partition)  # fmt: skip
    strategy = RecordingStrategy(base, recorder, 0.5)
    evaluated: list[int] = []

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        evaluated.append(server_round)
        recorder.end_round(server_round, None)

    grid = FakeGrid({21: 0, 22: 1})
    result = strategy.start(
        grid, ArrayRecord({"w": torch.zeros(3)}), num_rounds=4, train_config=ConfigRecord({"local-epochs": 1}),
        evaluate_fn=end_of_round, first_round=3,
    )  # fmt: skip
    assert evaluated == [3, 4], "no round-0 evaluation on resume; rounds 3 and 4 only"
    assert grid.rounds_sent == [3, 3, 4, 4], "the clients are told the run's real rounds"
    assert sorted(recorder.rounds) == [3, 4] and recorder.rounds[4]["train_ok"] == 2
    np.testing.assert_allclose(result.arrays["w"].numpy(), 0.5)  # the mean of partitions 0 and 1
    with pytest.raises(ValueError, match="first_round=5 must lie in 1..num_rounds=4"):
        strategy.start(grid, ArrayRecord({"w": torch.zeros(3)}), num_rounds=4, first_round=5)
