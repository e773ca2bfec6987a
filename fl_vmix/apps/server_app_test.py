"""Whole runs in one process: the real ServerApp ``main`` and the real ClientApp, joined by a grid that delivers
each message to its node as a SuperLink would (no Ray, no SuperLink, seconds per run). The oracles are computed
from what the grid saw cross the wire: the global weights sent, the clients' replies, the run's files."""

from __future__ import annotations

import base64
import csv
import json
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, Metadata, RecordDict
from flwr.serverapp import Grid

from fl_vmix.apps import client_app, server_app
from fl_vmix.apps.keys import node_key
from fl_vmix.experiment import Experiment, to_run_config
from fl_vmix.factory import initial_model
from fl_vmix.training import client as training_client


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity Flower's ServerApp runtime gives its process (messages are addressed from it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@dataclass
class Exchange:
    """One message the server sent and the reply its node gave."""

    server_round: int
    message_type: str
    partition: int
    sent: Message
    reply: Message


@dataclass
class LocalGrid(Grid):
    """Nodes in this process: each message goes to ``client_app.app`` with that node's own ``Context`` (kept
    across rounds, as a SuperNode keeps it); an exception becomes the error reply a SuperNode would send.
    The replies come back in partition order, or in its reverse with ``reverse`` (Flower samples the nodes in
    a random order; a SuperLink hands back replies as they arrive)."""

    experiment: Experiment
    reverse: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    contexts: dict[int, Context] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run_config = to_run_config(self.experiment)
        for partition in range(self.experiment.num_clients):
            node_config = {"partition-id": partition, "num-partitions": self.experiment.num_clients}
            self.contexts[1000 + 7 * partition] = Context(
                run_id=1, node_id=1000 + 7 * partition, node_config=node_config, state=RecordDict(),
                run_config=run_config,
            )  # fmt: skip

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as Flower's grids do when they push a message
            metadata = Metadata(
                run_id=1, message_id=msg.metadata.message_id, src_node_id=1, dst_node_id=node, reply_to_message_id="",
                group_id=msg.metadata.group_id, created_at=time.time(), ttl=600,
                message_type=msg.metadata.message_type,
            )  # fmt: skip
            delivered = Message(content=msg.content, metadata=metadata)
            try:
                answer = client_app.app(delivered, self.contexts[node])
            except Exception as err:  # what a SuperNode turns a ClientApp exception into
                answer = Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=delivered)
            partition = int(self.contexts[node].node_config["partition-id"])
            config = msg.content.config_records.get("config")
            server_round = int(config["server-round"]) if config is not None else 0  # type: ignore[arg-type]
            self.exchanges.append(Exchange(server_round, msg.metadata.message_type, partition, msg, answer))
            replies.append(answer)
        by_partition = {id(a): int(self.contexts[a.metadata.src_node_id].node_config["partition-id"]) for a in replies}
        return sorted(replies, key=lambda a: by_partition[id(a)], reverse=self.reverse)

    def train(self, server_round: int) -> list[Exchange]:
        """This round's train exchanges, in partition order."""
        found = [e for e in self.exchanges if e.message_type == "train" and e.server_round == server_round]
        return sorted(found, key=lambda e: e.partition)

    # Unused by the ServerApp: a SuperLink's plumbing.
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


def run(experiment: Experiment, out: Path, reverse: bool = False) -> LocalGrid:
    """The ServerApp's run of ``experiment``, writing to ``out``; the grid keeps what crossed the wire."""
    experiment = experiment.replace(output_dir=str(out))
    grid = LocalGrid(experiment, reverse=reverse)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=to_run_config(experiment))
    server_app.main(grid, context)
    return grid


def weights(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in arrays.to_torch_state_dict().items()}


def sent_weights(exchange: Exchange) -> dict[str, np.ndarray]:
    return weights(exchange.sent.content.array_records["arrays"])


def reply_weights(exchange: Exchange) -> dict[str, np.ndarray]:
    return weights(exchange.reply.content.array_records["arrays"])


def final_weights(out: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in torch.load(out / "model.pt").items()}


def flat(state: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([state[k].ravel() for k in sorted(state)])


# ------------------------------------------------------------------------------------------------- strategies
@pytest.mark.parametrize(
    "overrides, momentum, server_lr",
    [
        (["strategy=fedavg"], 0.0, 1.0),
        (["strategy=fedavgm", "strategy.server_momentum=0.9", "strategy.server_learning_rate=0.7"], 0.9, 0.7),
    ],
    ids=["fedavg", "fedavgm"],
)
def test_the_global_model_follows_the_strategys_update_rule(tiny_experiment, tmp_path, overrides, momentum, server_lr):
    """Oracle (Hsu et al. 2019, Flower's convention): with a_t the example-weighted mean of round t's replies,
    g_t = w_{t-1} - a_t, m_1 = g_1, m_t = beta m_{t-1} + g_t, w_t = w_{t-1} - eta m_t. FedAvg is beta=0, eta=1
    (w_t = a_t). The clients' replies and the weights they were sent are read off the wire."""
    experiment = tiny_experiment("num_rounds=3", "fraction_evaluate=0", "partition=dirichlet", *overrides)
    grid = run(experiment, tmp_path)
    w = weights(ArrayRecord(initial_model(experiment).state_dict()))
    m: dict[str, np.ndarray] | None = None
    for server_round in (1, 2, 3):
        exchanges = grid.train(server_round)
        assert len(exchanges) == 2 and all(not e.reply.has_error() for e in exchanges)
        for e in exchanges:  # every client starts from the global model of the round before
            np.testing.assert_allclose(flat(sent_weights(e)), flat(w), rtol=0, atol=1e-6)
        examples = np.array([float(e.reply.content["metrics"]["num-examples"]) for e in exchanges])
        assert examples[0] != examples[1], "unequal partitions, or a plain mean would pass for the weighted one"
        mean = {k: sum(n * reply_weights(e)[k] for n, e in zip(examples, exchanges)) / examples.sum() for k in w}
        g = {k: w[k] - mean[k] for k in w}
        m = g if m is None else {k: momentum * m[k] + g[k] for k in w}
        w = {k: w[k] - server_lr * m[k] for k in w}
    final = final_weights(tmp_path)
    np.testing.assert_allclose(flat(final), flat(w), rtol=0, atol=2e-5)
    if momentum:
        last_mean = flat(mean)
        assert np.abs(flat(final) - last_mean).max() > 1e-3, "FedAvgM must not end at the plain mean"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3


def test_fedprox_clients_train_with_the_servers_proximal_mu(tiny_experiment, tmp_path, monkeypatch):
    seen: list[float] = []
    real = training_client.train_epochs

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["proximal_mu"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training_client, "train_epochs", spy)
    experiment = tiny_experiment("strategy=fedprox", "strategy.proximal_mu=0.25", "num_rounds=2", "fraction_evaluate=0")
    grid = run(experiment, tmp_path)
    sent = [e.sent.content["config"]["proximal-mu"] for r in (1, 2) for e in grid.train(r)]
    assert sent == [0.25] * 4, "every train message carries FedProx's mu"
    assert seen == [0.25] * 4, "and every client's local training uses it"


def test_replies_are_aggregated_in_partition_order_whatever_order_they_arrive_in(tiny_experiment, tmp_path):
    # Three clients: a float sum of three terms depends on its order, so arrival order would show in the weights.
    experiment = tiny_experiment("num_clients=3", "num_rounds=1", "privacy=none")
    run(experiment, tmp_path / "in_order")
    run(experiment, tmp_path / "reversed", reverse=True)
    first, second = final_weights(tmp_path / "in_order"), final_weights(tmp_path / "reversed")
    assert all(np.array_equal(first[k], second[k]) for k in first), "the same weights, bit for bit"
    timing = {"obfuscation_s", "train_time_s"}
    records = [json.loads((tmp_path / d / "metrics.json").read_text())[-1] for d in ("in_order", "reversed")]
    train = [{k: v for k, v in r["train"].items() if k not in timing} for r in records]
    assert train[0] == train[1] and records[0]["evaluate"] == records[1]["evaluate"], "and the same metrics"


# --------------------------------------------------------------------------------------------------- failures
def test_a_run_with_too_few_successful_clients_stops_and_says_why(tiny_experiment, tmp_path):
    experiment = tiny_experiment("faults.fail_partitions=[1]", "min_success_fraction=0.75", "num_rounds=3")
    with pytest.raises(RuntimeError, match=r"round 1: only 1 of 2 clients succeeded in train"):
        run(experiment, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "min_success_fraction=0.75" in summary["error"] and summary["error"].startswith("RuntimeError: round 1")
    assert "injected failure on partition 1 in round 1" in summary["error"]
    assert "Traceback" in (tmp_path / "error.txt").read_text()
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert records[-1]["round"] == 1 and records[-1]["train_ok"] == 1 and records[-1]["train_failed"] == 1
    initial = initial_model(experiment).state_dict()
    saved = torch.load(tmp_path / "model.pt")
    assert all(torch.equal(saved[k], initial[k]) for k in initial), "no round completed: the initial weights"


def test_a_run_at_the_success_threshold_goes_on_and_counts_its_failures(tiny_experiment, tmp_path):
    experiment = tiny_experiment("faults.fail_partitions=[1]", "min_success_fraction=0.5", "num_rounds=2")
    run(experiment, tmp_path)  # 1 of 2 succeeded: exactly the fraction asked for
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2 and summary["client_failures"] == 2
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["train_ok"], r["train_failed"]) for r in records if r["round"] > 0] == [(1, 1), (1, 1)]


# ------------------------------------------------------------------------------------------------- central DP
def test_central_dp_clips_every_update_and_adds_noise_of_the_configured_scale(tiny_experiment, tmp_path):
    sigma, clip, n = 0.7, 0.05, 2
    experiment = tiny_experiment(
        "privacy=central_dp", f"privacy.noise_multiplier={sigma}", f"privacy.clipping_norm={clip}",
        "privacy.delta=1e-4", "num_rounds=2", "fraction_evaluate=0",
    )  # fmt: skip
    grid = run(experiment, tmp_path)
    globals_ = [flat(sent_weights(grid.train(r)[0])) for r in (1, 2)] + [flat(final_weights(tmp_path))]
    for server_round in (1, 2):
        start, new = globals_[server_round - 1], globals_[server_round]
        replies = [flat(reply_weights(e)) for e in grid.train(server_round)]
        for reply in replies:  # each client's update, clipped to the norm by the client-side mod
            assert np.linalg.norm(reply - start) == pytest.approx(clip, rel=1e-3), "clipping binds at this norm"
        noise = new - np.mean(replies, axis=0)  # equal client weights, then Gaussian noise on the mean
        assert abs(noise.mean()) < 5 * sigma * clip / n / math.sqrt(noise.size)
        assert noise.std() == pytest.approx(sigma * clip / n, rel=0.02), "std = noise_multiplier * C / clients"
    # The recorded epsilon is the RDP of that Gaussian mechanism, once per round, by Google's accountant.
    from dp_accounting import SelfComposedDpEvent
    from dp_accounting.dp_event import GaussianDpEvent
    from dp_accounting.rdp import RdpAccountant

    records = json.loads((tmp_path / "metrics.json").read_text())
    for record in records[1:]:
        accountant = RdpAccountant()
        accountant.compose(SelfComposedDpEvent(GaussianDpEvent(sigma), record["round"]))
        expected = accountant.get_epsilon(1e-4)
        assert record["server_dp"]["epsilon"] == pytest.approx(expected, rel=1e-3)
        assert record["server_dp"]["releases"] == record["round"] and record["server_dp"]["delta"] == 1e-4


@pytest.mark.parametrize("reproducible", [False, True], ids=["secret", "reproducible"])
def test_central_dp_noise_cannot_be_regenerated_from_what_the_server_and_clients_know(
    tiny_experiment, tmp_path, reproducible
):
    """An attacker with config.json (every client receives the seed), the released models and the clipped updates
    regenerates the noise as the ServerApp seeded it and subtracts it. Closed form: with secret noise what remains
    is the difference of two independent draws, of norm sqrt(2) * sigma * C / n * sqrt(d); with the seed it is the
    float32 rounding of the weights. ``reproducible_noise=true`` is that opt-in, and the run says so."""
    from fl_vmix.apps.keys import REPRODUCIBLE_NOISE_WARNING
    from fl_vmix.recording import load_checkpoint

    sigma, clip, n = 0.5, 0.05, 2
    experiment = tiny_experiment(
        "privacy=central_dp", f"privacy.noise_multiplier={sigma}", f"privacy.clipping_norm={clip}", "num_rounds=2",
        "fraction_evaluate=0", f"reproducible_noise={str(reproducible).lower()}",
    )  # fmt: skip
    grid = run(experiment, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    np.random.seed(config["seed"])  # what a reader of config.json can do
    released = [flat(sent_weights(grid.train(r)[0])) for r in (1, 2)] + [flat(final_weights(tmp_path))]
    std = sigma * clip / n
    for server_round in (1, 2):
        sent = grid.train(server_round)[0].sent.content.array_records["arrays"]
        guess = {
            k: np.random.normal(0, std, v.shape).astype(v.dtype)  # in Flower's order: the arrays' own
            for k, v in zip(sent.keys(), sent.to_numpy_ndarrays(), strict=True)
        }
        update_mean = np.mean([flat(reply_weights(e)) for e in grid.train(server_round)], axis=0)
        residual = released[server_round] - flat({k: v.astype(np.float64) for k, v in guess.items()}) - update_mean
        d = residual.size
        if reproducible:
            assert np.linalg.norm(residual) < 1e-2 * clip / n, "the seed gives the noise back: the mean update is bare"
        else:
            expected = math.sqrt(2) * std * math.sqrt(d)
            assert np.linalg.norm(residual) == pytest.approx(expected, rel=0.05), "the noise stays secret"
            assert np.linalg.norm(residual) > 100 * clip, "what remains hides every clipped update"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warnings"] == ([REPRODUCIBLE_NOISE_WARNING] if reproducible else [])
    # The checkpoint keeps the secret generator's state out (a Mersenne Twister state also gives back past draws).
    assert (load_checkpoint(tmp_path).rng["numpy"] is not None) == reproducible


def test_secret_noise_leaves_everything_else_reproducible(tiny_experiment, tmp_path):
    """Two runs of one experiment with secret central-DP noise: every client's round-1 update (data, batch order,
    dropout: all from the public seed) is the same bit for bit; only the noise, hence the released model, differs.
    With DP-SGD (secret noise on the clients) the server still samples the same nodes every round."""
    central = tiny_experiment("privacy=central_dp", "num_rounds=1", "fraction_evaluate=0")
    first, second = run(central, tmp_path / "a"), run(central, tmp_path / "b")
    for a, b in zip(first.train(1), second.train(1), strict=True):
        assert a.partition == b.partition and np.array_equal(flat(reply_weights(a)), flat(reply_weights(b)))
    assert not np.array_equal(flat(final_weights(tmp_path / "a")), flat(final_weights(tmp_path / "b")))
    dp_sgd = tiny_experiment("privacy=dp_sgd", "num_clients=3", "fraction_train=0.67", "num_rounds=2",
                             "fraction_evaluate=0")  # fmt: skip
    first, second = run(dp_sgd, tmp_path / "c"), run(dp_sgd, tmp_path / "d")
    sampled = [[e.partition for e in grid.train(r)] for grid in (first, second) for r in (1, 2)]
    assert sampled[:2] == sampled[2:] and all(len(s) == 2 for s in sampled), sampled


def test_an_evaluate_failure_counts_in_the_rounds_failures_and_the_summary(tiny_experiment, tmp_path, monkeypatch):
    real = training_client.LocalClient.evaluate

    def fail_on_partition_1(self, weights):  # type: ignore[no-untyped-def]
        if self.partition_id == 1:
            raise RuntimeError("injected evaluate failure")
        return real(self, weights)

    monkeypatch.setattr(training_client.LocalClient, "evaluate", fail_on_partition_1)
    run(tiny_experiment("num_rounds=2", "min_success_fraction=0.5", "privacy=none"), tmp_path)
    records = [r for r in json.loads((tmp_path / "metrics.json").read_text()) if r["round"] > 0]
    assert [(r["train_failed"], r["eval_ok"], r["eval_failed"]) for r in records] == [(0, 1, 1)] * 2
    assert all("evaluate failure" in " ".join(r["failures"]) for r in records)
    with (tmp_path / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["round"]) > 0]
    assert [int(row["clients_failed"]) for row in rows] == [1, 1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["client_failures"] == 2


# ------------------------------------------------------------------------------------------------------- keys
def _encodings(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key), base64.b64encode(key)[:-1]]


def _wire_bytes(msg: Message) -> bytes:
    """Everything a message carries: array bytes, config and metric values, as bytes."""
    parts: list[bytes] = []
    for record in msg.content.array_records.values():
        parts += [t.numpy().tobytes() for t in record.to_torch_state_dict().values()]
    for record in [*msg.content.config_records.values(), *msg.content.metric_records.values()]:
        for key, value in record.items():
            parts += [str(key).encode(), value if isinstance(value, bytes) else repr(value).encode()]
    return b"\x00".join(parts)


@pytest.mark.parametrize("keys", ["derived", "random"])
def test_no_message_and_no_run_file_carries_a_clients_key(tiny_experiment, tmp_path, keys):
    experiment = tiny_experiment(f"engine.simulation_keys={keys}", "num_rounds=1")
    grid = run(experiment, tmp_path)
    client_keys = [node_key(dict(c.node_config), experiment.seed, keys) for c in grid.contexts.values()]
    assert len(set(client_keys)) == 2 and all(len(k) == 32 for k in client_keys)
    assert {e.message_type for e in grid.exchanges} == {"train", "evaluate"}
    wire = [_wire_bytes(e.sent) for e in grid.exchanges] + [_wire_bytes(e.reply) for e in grid.exchanges]
    wire.append(json.dumps(to_run_config(experiment)).encode())
    wire += [p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".json", ".csv")]
    for key in client_keys:
        for encoding in _encodings(key):
            assert not any(encoding in blob for blob in wire), "a client's key crossed the wire or reached a file"
    # A run whose keys anyone with config.json can derive says so in summary.json (and the console shows it).
    from fl_vmix.apps.keys import DERIVED_KEYS_WARNING

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warnings"] == ([DERIVED_KEYS_WARNING] if keys == "derived" else [])


def test_a_checkpoint_written_before_reproducible_noise_existed_still_resumes(tiny_experiment, tmp_path):
    from dataclasses import replace

    from fl_vmix.recording import load_checkpoint, save_checkpoint

    experiment = tiny_experiment("num_rounds=1", "fraction_evaluate=0", "privacy=none")
    run(experiment, tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    old = {k: v for k, v in checkpoint.config.items() if k != "reproducible_noise"}
    save_checkpoint(tmp_path, replace(checkpoint, config=old))
    resumed = experiment.replace(output_dir=str(tmp_path), resume=str(tmp_path), num_rounds=2)
    assert server_app.resume_checkpoint(resumed, tmp_path).round == 1
