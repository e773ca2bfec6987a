"""fl_vmix ServerApp: aggregates client models (FedAvg / FedProx / FedAvgM) and records every round.

The server never sees images or keys: clients reply with model arrays and scalar metrics only. It
runs with the nodes the federation has (:mod:`fl_vmix.apps.federation`), writes a resumable
checkpoint every ``checkpoint_every`` rounds (:mod:`fl_vmix.apps.checkpoint`), and with
``resume=<run dir>`` continues that run from its checkpoint: the same weights, strategy state,
records and random states, so the resumed run ends with the metrics of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
import traceback
import uuid
from datetime import datetime
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fl_vmix.apps.central import CentralEvaluator
from fl_vmix.apps.checkpoint import Checkpointer, load_strategy_state
from fl_vmix.apps.client_state import RUN_UID_KEY, STATE_DIR_KEY
from fl_vmix.apps.dp import seed_central_dp_noise
from fl_vmix.apps.federation import federation_nodes, fit_to_federation, ordered_grid
from fl_vmix.apps.keys import KEY_ORIGINS, run_warnings
from fl_vmix.apps.strategy import RecordingStrategy, build_strategy
from fl_vmix.checks import check_experiment
from fl_vmix.experiment import ConfigError, Experiment, experiment_from_run_config, from_recorded
from fl_vmix.factory import initial_model
from fl_vmix.recording import RunCheckpoint, RunRecorder, load_checkpoint, restore_rng
from fl_vmix.training.device import set_threads

logger = logging.getLogger("fl_vmix.server")


def output_dir_for(experiment: Experiment) -> Path:
    if experiment.resume:
        return Path(experiment.resume).expanduser().resolve()
    if experiment.output_dir:
        return Path(experiment.output_dir).expanduser().resolve()
    return Path.home() / "fl_vmix_runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def recorded_config(experiment: Experiment, out: Path) -> dict[str, object]:
    """What ``config.json`` holds: the experiment as it runs here (its folder, no ``resume``), so the file
    starts the same experiment anew and a resumed run records the experiment it continues."""
    return experiment.replace(output_dir=str(out), resume=None).to_dict()


def resume_checkpoint(experiment: Experiment, out: Path) -> RunCheckpoint:
    """The checkpoint of the run ``resume`` names, checked against the experiment that continues it."""
    checkpoint = load_checkpoint(out)
    recorded = from_recorded(checkpoint.config)  # a checkpoint written before a setting existed gets its default
    if experiment.num_clients != recorded.num_clients:
        raise ConfigError(
            f"resume={out}: the run had {recorded.num_clients} clients and this federation has "
            f"{experiment.num_clients} nodes: each node holds one partition of {recorded.num_clients}, so resume it "
            f"on {recorded.num_clients} nodes (python -m fl_vmix resume=<run dir> starts them)"
        )
    mine = experiment.replace(output_dir=recorded.output_dir, resume=None)
    same = {
        "num_rounds": recorded.num_rounds,
        "checkpoint_every": recorded.checkpoint_every,
        "device": recorded.device,
        "tensorboard": recorded.tensorboard,
        "engine": recorded.engine,
    }
    if mine.replace(**same) != recorded:
        raise ConfigError(
            f"resume={out}: this experiment differs from the run's checkpoint in more than num_rounds and "
            "execution settings: resume with python -m fl_vmix resume=<run dir> [num_rounds=N], which reads the "
            "run's own config"
        )
    if experiment.num_rounds <= checkpoint.round:
        raise ConfigError(
            f"resume={out}: the run already has {checkpoint.round} rounds and num_rounds={experiment.num_rounds}: "
            f"pass num_rounds > {checkpoint.round} to continue it"
        )
    return checkpoint


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    experiment = experiment_from_run_config(context.run_config)
    check_experiment(experiment)  # stop before any round on a bad model, privacy or data setting
    set_threads(experiment.engine.threads_per_client)
    nodes = federation_nodes(grid, experiment)
    experiment = fit_to_federation(experiment, len(nodes))
    # After fitting: a resumed run needs as many nodes as it had (each holds its partition of that many).
    resume = resume_checkpoint(experiment, output_dir_for(experiment)) if experiment.resume else None
    random.seed(experiment.seed)  # Flower samples nodes with the random module: public and reproducible
    # Flower draws central DP's noise from NumPy's global RNG: secret unless the experiment opts out.
    seed_central_dp_noise(experiment.seed if experiment.reproducible_noise else None)
    out = output_dir_for(experiment)
    run_uid = resume.run_uid if resume else uuid.uuid4().hex
    resumed_at = (*resume.resumed_at, resume.round) if resume else ()
    cfg = recorded_config(experiment, out)
    origin = "node" if experiment.engine.name == "deployment" else experiment.engine.simulation_keys or "random"
    warnings = run_warnings(experiment)  # randomness anyone who knows the seed can regenerate
    info = {
        "keys": KEY_ORIGINS[origin],  # DP guarantees against the server need secret keys
        "warnings": warnings,
        "run_uid": run_uid,
        "resumed_at_rounds": list(resumed_at),
    }
    recorder = RunRecorder(
        out,
        cfg,
        records=resume.records if resume else None,
        elapsed_s=resume.elapsed_s if resume else 0.0,
        info=info,
        tensorboard=experiment.tensorboard,
    )
    logger.info("fl_vmix run writing to %s%s", out, f" (resuming after round {resume.round})" if resume else "")
    for warning in warnings:
        logger.warning(warning)
    model = initial_model(experiment)
    strategy = RecordingStrategy(build_strategy(experiment), recorder, experiment.min_success_fraction)
    arrays = ArrayRecord(model.state_dict())
    if resume is not None:
        load_strategy_state(strategy, resume.strategy)
        arrays = ArrayRecord(dict(resume.arrays))
    central = CentralEvaluator(experiment, model) if experiment.central_eval else None
    checkpointer = Checkpointer(
        out,
        experiment.checkpoint_every,
        experiment.num_rounds,
        strategy,
        recorder,
        run_uid,
        cfg,
        resumed_at,
        numpy_rng=experiment.reproducible_noise,
    )
    sampling_grid = ordered_grid(grid, experiment, nodes)
    latest = {"arrays": arrays}

    def end_of_round(server_round: int, round_arrays: ArrayRecord) -> MetricRecord | None:
        latest["arrays"] = round_arrays
        metrics = central(round_arrays) if central is not None else None
        recorder.end_round(server_round, metrics)
        if server_round > 0:
            checkpointer.round_done(server_round, round_arrays)
        return MetricRecord(dict(metrics.items())) if metrics else None

    train_config: dict[str, ConfigRecordValues] = {"local-epochs": experiment.local_epochs, RUN_UID_KEY: run_uid}
    if experiment.engine.name == "simulation":
        train_config[STATE_DIR_KEY] = str(out / "client_state")  # clients share this machine (client_state.py)
    if resume is not None:
        restore_rng(resume.rng)  # last: building the model and the strategy above drew from torch's RNG
        if not experiment.reproducible_noise:
            seed_central_dp_noise(None)  # the checkpoint kept no noise state: fresh secret noise from here on
    try:
        result = strategy.start(
            grid=sampling_grid,
            initial_arrays=arrays,
            num_rounds=experiment.num_rounds,
            train_config=ConfigRecord(train_config),
            evaluate_fn=end_of_round,
            timeout=experiment.engine.round_timeout_s or math.inf,  # deployment only; else wait for every reply
            first_round=resume.round + 1 if resume else 1,
        )
    except BaseException as err:
        written = checkpointer.write()  # the last completed round, if checkpoint_every had not saved it yet
        (out / "error.txt").write_text("".join(traceback.format_exception(err)))
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        recorder.info["checkpoint_round"] = written or checkpointer.written_round or None
        recorder.finish(latest["arrays"].to_torch_state_dict(), status=status, error=f"{type(err).__name__}: {err}")
        raise
    recorder.info["checkpoint_round"] = checkpointer.written_round
    recorder.finish(result.arrays.to_torch_state_dict(), status="completed")
