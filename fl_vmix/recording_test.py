"""RunRecorder: every round on disk as it ends, one CSV row per round and per client, and the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fl_vmix.recording import ROUND_COLUMNS, RunRecorder, read_json, round_epsilon

CONFIG = {"experiment": "unit", "dataset": {"name": "cifar10"}, "privacy": {"method": "dp_sgd", "delta": 1e-5}}


def client(pid: int, loss: float, accuracy: float, epsilon: float | None = None) -> dict:
    metrics = {"partition-id": pid, "num-examples": 10, "train_loss": loss, "train_accuracy": accuracy,
               "vfe_corrected": 2.0, "vfe_reference": 4.0, "ssim": 0.2, "psnr": 14.0}  # fmt: skip
    return metrics if epsilon is None else {**metrics, "epsilon": epsilon}


def play_round(recorder: RunRecorder, server_round: int, accuracy: float, errors: list[str] = ()) -> None:  # type: ignore[assignment]
    recorder.start_round(server_round)
    clients = [
        client(0, 1.0, accuracy, epsilon=server_round * 1.0),
        client(1, 2.0, accuracy, epsilon=server_round * 1.5),
    ]
    recorder.record_replies(server_round, "train", clients, list(errors))
    aggregated = {"train_loss": 1.5, "train_accuracy": accuracy, "vfe_corrected": 2.0, "vfe_reference": 4.0}
    recorder.record_aggregate(server_round, "train", {**aggregated, "ssim": 0.2, "psnr": 14.0})
    evals = [{"partition-id": 0, "loss": 1.1, "accuracy": accuracy, "num-examples": 5}]
    recorder.record_replies(server_round, "eval", evals, [])
    recorder.record_aggregate(server_round, "evaluate", {"loss": 1.1, "accuracy": accuracy})
    recorder.end_round(server_round, None)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_each_round_is_on_disk_when_it_ends(tmp_path):
    recorder = RunRecorder(tmp_path, CONFIG)
    assert json.loads((tmp_path / "config.json").read_text()) == CONFIG
    play_round(recorder, 1, 0.3)
    first = rows(tmp_path / "metrics.csv")
    assert list(first[0]) == ROUND_COLUMNS and len(first) == 1
    assert float(first[0]["eval_accuracy"]) == 0.3 and float(first[0]["epsilon"]) == 1.5  # the largest client's
    play_round(recorder, 2, 0.4, errors=["node 12: boom"])
    second = rows(tmp_path / "metrics.csv")
    assert [r["round"] for r in second] == ["1", "2"] and second[1]["clients_failed"] == "1"
    assert float(second[1]["round_time_s"]) >= 0
    per_client = rows(tmp_path / "clients.csv")
    assert [(r["round"], r["partition_id"]) for r in per_client] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert per_client[0]["eval_accuracy"] == "0.3" and per_client[1]["eval_accuracy"] == ""
    assert read_json(tmp_path / "metrics.json")[-1]["failures"] == ["train: node 12: boom"]


def test_finish_writes_the_summary_model_and_plot(tmp_path):
    recorder = RunRecorder(tmp_path, CONFIG)
    for server_round, accuracy in ((1, 0.3), (2, 0.5), (3, 0.4)):
        play_round(recorder, server_round, accuracy)
    state = {"w": torch.arange(3.0)}
    summary = recorder.finish(state)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    assert summary["final_accuracy"] == 0.4 and summary["best_accuracy"] == 0.5
    assert summary["epsilon"] == pytest.approx(4.5) and summary["delta"] == 1e-5
    assert torch.equal(torch.load(tmp_path / "model.pt")["w"], state["w"])
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_the_server_accountant_wins_over_clients():
    record = {"clients": {"0": {"epsilon": 9.0}}, "server_dp": {"epsilon": 2.0, "delta": 1e-5, "releases": 1}}
    assert round_epsilon(record) == 2.0
    assert round_epsilon({"clients": {"0": {"epsilon": 9.0}, "1": {"epsilon": 3.0}}}) == 9.0
    assert round_epsilon({"clients": {"0": {}}}) is None


def test_a_failed_run_says_why(tmp_path):
    recorder = RunRecorder(tmp_path, CONFIG)
    play_round(recorder, 1, 0.3)
    summary = recorder.finish({"w": torch.zeros(1)}, status="failed", error="RuntimeError: only 1 of 3")
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: only 1 of 3" and summary["rounds"] == 1
    assert read_json(tmp_path / "missing.json") is None


def test_tensorboard_logs_every_rounds_metrics(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    recorder = RunRecorder(tmp_path, CONFIG, tensorboard=True)
    for server_round, accuracy in ((1, 0.3), (2, 0.5)):
        play_round(recorder, server_round, accuracy)
    recorder.finish({})
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    accuracies = [(e.step, round(e.value, 6)) for e in events.Scalars("accuracy/federated_eval")]
    assert accuracies == [(1, 0.3), (2, 0.5)]
    assert [e.step for e in events.Scalars("privacy/epsilon")] == [1, 2]
    assert "accuracy/central_eval" not in events.Tags()["scalars"], "no central evaluation: nothing logged"


def test_tensorboard_is_off_by_default(tmp_path):
    recorder = RunRecorder(tmp_path, CONFIG)
    play_round(recorder, 1, 0.3)
    recorder.finish({})
    assert not (tmp_path / "tensorboard").exists()
