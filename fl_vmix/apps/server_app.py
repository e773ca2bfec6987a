"""fl_vmix ServerApp: aggregates client models (FedAvg / FedProx / FedAvgM) and records every round.

The server never sees images or keys: clients reply with model arrays and scalar metrics only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedProx, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_vmix.apps.config import ConfigError, experiment_from_run_config
from fl_vmix.apps.recorder import RunRecorder
from fl_vmix.apps.validate import dataset_shape, validate_experiment

logger = logging.getLogger("fl_vmix.server")

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM}
PARTITION_KEY = "partition-id"


def _without_partition(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Weighted mean of client metrics; the partition id is a label, not a metric."""
    aggregated = aggregate_metricrecords(records, weighting_key)
    if PARTITION_KEY in aggregated:
        del aggregated[PARTITION_KEY]
    return aggregated


def _partition_of(msg: Message) -> int:
    if msg.has_error():
        return 1 << 30
    for record in msg.content.metric_records.values():
        if PARTITION_KEY in record:
            return int(record[PARTITION_KEY])
    return 1 << 30


class RecordingStrategy:
    """Mixin for a Flower strategy: replies are aggregated in partition order (so floating-point sums,
    and thus metrics, are reproducible), every client's metrics and failures are recorded, and a round
    with too few successful clients stops the run."""

    recorder: RunRecorder
    min_success_fraction: float

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.recorder.start_round(server_round)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def _record(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[Message]:
        ordered = sorted(replies, key=_partition_of)
        ok = [m for m in ordered if not m.has_error()]
        errors = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in ordered if m.has_error()]
        metrics = [dict(next(iter(m.content.metric_records.values()))) for m in ok if m.content.metric_records]
        self.recorder.record_replies(server_round, phase, metrics, errors)
        for error in errors:
            logger.warning("round %d %s failed on %s", server_round, phase, error)
        if ordered and len(ok) < self.min_success_fraction * len(ordered):
            self.recorder.flush()
            raise RuntimeError(
                f"round {server_round}: only {len(ok)} of {len(ordered)} clients succeeded in {phase} "
                f"(min_success_fraction={self.min_success_fraction}); first error: {errors[0] if errors else '?'}"
            )
        return ordered

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        arrays, metrics = super().aggregate_train(server_round, self._record(server_round, "train", replies))  # type: ignore[misc]
        self.recorder.record_aggregate(server_round, "train", dict(metrics) if metrics else {})
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        metrics = super().aggregate_evaluate(server_round, self._record(server_round, "eval", replies))  # type: ignore[misc]
        self.recorder.record_aggregate(server_round, "evaluate", dict(metrics) if metrics else {})
        return metrics


def build_strategy(cfg: dict[str, Any], recorder: RunRecorder) -> Strategy:
    strategy_cfg = dict(cfg["strategy"])
    name = strategy_cfg.pop("name")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    num_clients = int(cfg["num_clients"])
    kwargs: dict[str, Any] = dict(
        fraction_train=float(cfg["fraction_train"]),
        fraction_evaluate=float(cfg["fraction_evaluate"]),
        min_train_nodes=1,
        min_evaluate_nodes=1 if cfg["fraction_evaluate"] > 0 else 0,
        min_available_nodes=num_clients,
        train_metrics_aggr_fn=_without_partition,
        evaluate_metrics_aggr_fn=_without_partition,
    )
    kwargs.update({k: float(v) for k, v in strategy_cfg.items()})
    base = STRATEGIES[name]
    if cfg["privacy"].get("method") == "central_dp":
        from fl_vmix.evaluation.training_dp import UNIFORM_WEIGHT_KEY, CentralDP, wrap_central_dp

        params = {k: v for k, v in cfg["privacy"].items() if k != "method"}
        # Flower's accountant needs FedAvg's own aggregation with equal client weights.
        inner = base(**{**kwargs, "weighted_by_key": UNIFORM_WEIGHT_KEY})
        strategy = wrap_central_dp(inner, CentralDP(**params), num_clients, RecordingStrategy)
    else:
        cls = type(f"Recording{base.__name__}", (RecordingStrategy, base), {})
        strategy = cls(**kwargs)
    strategy.recorder = recorder
    strategy.min_success_fraction = float(cfg.get("min_success_fraction", 0.5))
    return strategy


def output_dir_for(cfg: dict[str, Any]) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg["output_dir"]).expanduser().resolve()
    return Path.home() / "fl_vmix_runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def initial_model(cfg: dict[str, Any]) -> torch.nn.Module:
    from fl_vmix.apps.task import model_from_config

    num_classes, channels, size = dataset_shape(cfg)
    torch.manual_seed(int(cfg["seed"]))
    return model_from_config(cfg, num_classes, channels, size)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = experiment_from_run_config(context.run_config)
    validate_experiment(cfg)  # stop before any round on a bad model, privacy or data setting
    random.seed(int(cfg["seed"]))  # Flower samples nodes with the random module
    torch.set_num_threads(1)
    out = output_dir_for(cfg)
    recorder = RunRecorder(out, {**cfg, "output_dir": str(out)})
    logger.info("fl_vmix run writing to %s", out)
    model = initial_model(cfg)
    strategy = build_strategy(cfg, recorder)
    central = None
    if cfg.get("central_eval"):
        from fl_vmix.apps.central import CentralEvaluator

        central = CentralEvaluator(cfg, model)

    latest = {"arrays": ArrayRecord(model.state_dict())}

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        latest["arrays"] = arrays
        metrics = central(arrays) if central is not None else None
        spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
        if spent is not None and server_round > 0:
            recorder.round(server_round)["server_dp"] = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
        recorder.end_round(server_round, metrics)
        return MetricRecord(metrics) if metrics else None

    train_config = ConfigRecord({"local-epochs": int(cfg["local_epochs"])})
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=int(cfg["num_rounds"]),
            train_config=train_config,
            evaluate_fn=end_of_round,
            timeout=float(cfg["engine"].get("timeout_s", 3600)),
        )
    except BaseException as err:
        import traceback

        (out / "error.txt").write_text("".join(traceback.format_exception(err)))
        recorder.finish(latest["arrays"].to_torch_state_dict(), status="failed", error=f"{type(err).__name__}: {err}")
        raise
    recorder.finish(result.arrays.to_torch_state_dict(), status="completed")
