"""fl_vmix ServerApp: aggregates client models (FedAvg / FedProx / FedAvgM) and records every round.

The server never sees images or keys: clients reply with model arrays and scalar metrics only.
"""

from __future__ import annotations

import logging
import random
import traceback
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fl_vmix.apps.central import CentralEvaluator
from fl_vmix.apps.strategy import RecordingStrategy, build_strategy
from fl_vmix.checks import check_experiment
from fl_vmix.experiment import Experiment, experiment_from_run_config
from fl_vmix.factory import initial_model
from fl_vmix.recording import RunRecorder

logger = logging.getLogger("fl_vmix.server")


def output_dir_for(experiment: Experiment) -> Path:
    if experiment.output_dir:
        return Path(experiment.output_dir).expanduser().resolve()
    return Path.home() / "fl_vmix_runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    experiment = experiment_from_run_config(context.run_config)
    check_experiment(experiment)  # stop before any round on a bad model, privacy or data setting
    random.seed(experiment.seed)  # Flower samples nodes with the random module
    torch.set_num_threads(1)
    out = output_dir_for(experiment)
    recorder = RunRecorder(out, experiment.replace(output_dir=str(out)).to_dict())
    logger.info("fl_vmix run writing to %s", out)
    model = initial_model(experiment)
    strategy = RecordingStrategy(build_strategy(experiment), recorder, experiment.min_success_fraction)
    central = None
    if experiment.central_eval:
        central = CentralEvaluator(experiment, model)

    latest = {"arrays": ArrayRecord(model.state_dict())}

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        latest["arrays"] = arrays
        metrics = central(arrays) if central is not None else None
        recorder.end_round(server_round, metrics)
        return MetricRecord(dict(metrics.items())) if metrics else None

    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=experiment.num_rounds,
            train_config=ConfigRecord({"local-epochs": experiment.local_epochs}),
            evaluate_fn=end_of_round,
            timeout=experiment.engine.timeout_s,
        )
    except BaseException as err:
        (out / "error.txt").write_text("".join(traceback.format_exception(err)))
        recorder.finish(latest["arrays"].to_torch_state_dict(), status="failed", error=f"{type(err).__name__}: {err}")
        raise
    recorder.finish(result.arrays.to_torch_state_dict(), status="completed")
