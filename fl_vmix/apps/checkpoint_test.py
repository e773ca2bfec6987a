"""What the server checkpoints: strategy state (FedAvgM momentum, the DP accountant), RNG states, the file,
and when it is written; and the client's own per-round DP-SGD state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvgM

from fl_vmix.apps.checkpoint import Checkpointer, load_strategy_state, strategy_state
from fl_vmix.apps.client_state import RUN_UID_KEY, STATE_DIR_KEY, ClientStateStore, state_store
from fl_vmix.apps.dp import wrap_central_dp
from fl_vmix.apps.strategy import RecordingStrategy, build_strategy
from fl_vmix.apps.strategy_test import Configured, reply, request
from fl_vmix.experiment import compose
from fl_vmix.privacy.training_level import CentralDP
from fl_vmix.recording import CheckpointError, RunCheckpoint, RunRecorder, load_checkpoint, restore_rng, rng_state


class ConfiguredFedAvgM(FedAvgM):
    """Flower's FedAvgM with server momentum that, without a Flower runtime, configures a round with
    ready-made messages to nodes 11 and 12 (as strategy_test.Configured does for FedAvg)."""

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        if self.current_arrays is None:
            self.current_arrays = arrays
        return [request(11, server_round), request(12, server_round)]


def momentum_strategy(recorder: RunRecorder) -> RecordingStrategy:
    strategy = ConfiguredFedAvgM(min_available_nodes=1, server_learning_rate=1.0, server_momentum=0.9)
    return RecordingStrategy(strategy, recorder, 0.5)


def play(
    strategy: RecordingStrategy, server_round: int, arrays: ArrayRecord, values: tuple[float, float]
) -> ArrayRecord:
    list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid=None))  # type: ignore[arg-type]
    new, _ = strategy.aggregate_train(server_round, [reply(0, values[0], 10), reply(1, values[1], 10)])
    assert new is not None
    return new


def test_fedavgm_momentum_survives_a_checkpoint(tmp_path):
    start = ArrayRecord({"w": torch.zeros(3)})
    uninterrupted = momentum_strategy(RunRecorder(tmp_path / "a", {}))
    arrays = play(uninterrupted, 1, start, (1.0, 2.0))
    arrays = play(uninterrupted, 2, arrays, (2.0, 3.0))
    saved = strategy_state(uninterrupted)
    assert any("momentum_vector" in entry for entry in saved.values()), "FedAvgM's momentum is saved"
    resumed = momentum_strategy(RunRecorder(tmp_path / "b", {}))
    load_strategy_state(resumed, saved)
    after_uninterrupted = play(uninterrupted, 3, arrays, (3.0, 4.0))["w"].numpy()
    after_resumed = play(resumed, 3, arrays, (3.0, 4.0))["w"].numpy()
    np.testing.assert_array_equal(after_resumed, after_uninterrupted)
    fresh = momentum_strategy(RunRecorder(tmp_path / "c", {}))  # what a resume without the momentum would give
    assert not np.array_equal(play(fresh, 3, arrays, (3.0, 4.0))["w"].numpy(), after_uninterrupted)


def test_the_central_dp_accountant_survives_a_checkpoint(tmp_path):
    def strategy() -> RecordingStrategy:
        dp = wrap_central_dp(Configured(weighted_by_key="uniform-weight"), CentralDP(noise_multiplier=1.0), 2)
        return RecordingStrategy(dp, RunRecorder(tmp_path / str(random.random()), {}), 0.5)

    first = strategy()
    arrays = ArrayRecord({"w": torch.zeros(3)})
    for server_round in (1, 2):
        arrays = play(first, server_round, arrays, (0.1, 0.2))
    spent = first.privacy_spent()
    second = strategy()
    load_strategy_state(second, strategy_state(first))
    assert second.privacy_spent() == spent and spent is not None and spent.num_releases == 2
    play(first, 3, arrays, (0.1, 0.2))
    play(second, 3, arrays, (0.1, 0.2))
    assert second.privacy_spent() == first.privacy_spent()


def test_a_checkpoint_of_another_strategy_is_refused(tmp_path):
    fedavg = RecordingStrategy(build_strategy(compose()), RunRecorder(tmp_path, {}), 0.5)
    with pytest.raises(ValueError, match="resume with the experiment the run was started with"):
        load_strategy_state(fedavg, {"0:RecordingStrategy": {}, "1:FedAvgM": {}})


def test_rng_states_round_trip():
    state = rng_state()
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_the_checkpointer_writes_every_k_rounds_the_last_round_and_on_demand(tmp_path):
    recorder = RunRecorder(tmp_path, {"experiment": "unit"})
    strategy = RecordingStrategy(build_strategy(compose(["strategy=fedavgm"])), recorder, 0.5)
    checkpointer = Checkpointer(tmp_path, 2, 5, strategy, recorder, "abc123", {"experiment": "unit"})
    written = []
    for server_round in range(1, 6):
        recorder.start_round(server_round)
        recorder.end_round(server_round, None)
        checkpointer.round_done(server_round, ArrayRecord({"w": torch.full((2,), float(server_round))}))
        written.append(checkpointer.written_round)
        if server_round == 3:
            assert load_checkpoint(tmp_path).round == 2, "round 3 is only in memory"
            assert checkpointer.write() == 3 and load_checkpoint(tmp_path).round == 3, "a stopping run writes it"
    assert written == [0, 2, 2, 4, 5], "every 2 rounds and the last round (round 3 only when asked)"
    checkpoint = load_checkpoint(tmp_path)
    assert isinstance(checkpoint, RunCheckpoint) and checkpoint.run_uid == "abc123"
    assert torch.equal(checkpoint.arrays["w"], torch.full((2,), 5.0)) and sorted(checkpoint.records) == [1, 2, 3, 4, 5]


def test_a_missing_or_broken_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist: only a run that finished at least one round"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read.*start the run anew"):
        load_checkpoint(tmp_path)


def test_a_client_continues_from_the_last_round_it_trained_before_the_one_asked(tmp_path):
    store = ClientStateStore(tmp_path, 3)
    assert store.history_before(1) is None
    store.save(1, ((1.0, 0.1, 5),))
    store.save(3, ((1.0, 0.1, 15),))  # not sampled in round 2
    assert store.history_before(2) == ((1.0, 0.1, 5),) and store.history_before(4) == ((1.0, 0.1, 15),)
    assert store.history_before(3) == ((1.0, 0.1, 5),), "a round trained before a restart is trained again"
    store.save(3, ((1.0, 0.1, 16),))
    assert store.history_before(9) == ((1.0, 0.1, 16),)
    store.save(2, ((1.0, 0.1, 10),))  # a resumed run retrains round 2: later entries were never checkpointed
    assert store.history_before(9) == ((1.0, 0.1, 10),)


def test_where_a_client_keeps_its_state(tmp_path):
    config = {RUN_UID_KEY: "abc123", STATE_DIR_KEY: str(tmp_path / "run" / "client_state")}
    simulated = state_store({"partition-id": 1}, config, 1)
    assert simulated is not None and simulated.path == tmp_path / "run" / "client_state" / "abc123" / "partition-1.json"
    node = state_store({"data-path": str(tmp_path / "fed" / "client-2")}, config, 2)
    assert node is not None and node.path == tmp_path / "fed" / "client-2" / "state" / "abc123" / "partition-2.json"
    own = state_store({"state-dir": str(tmp_path / "own")}, config, 2)
    assert own is not None and own.path.parent == tmp_path / "own" / "abc123"
    assert state_store({"partition-id": 1}, {}, 1) is None, "a server that names no run"
    assert state_store({"partition-id": 1}, {RUN_UID_KEY: "../../etc"}, 1) is None, "the uid names no other folder"


def test_a_recorder_continues_from_the_checkpoints_records(tmp_path: Path):
    first = RunRecorder(tmp_path, {"experiment": "unit"})
    for server_round in (1, 2):
        first.start_round(server_round)
        first.record_aggregate(server_round, "evaluate", {"loss": 1.0, "accuracy": 0.1 * server_round})
        first.end_round(server_round, None)
    resumed = RunRecorder(tmp_path, {"experiment": "unit"}, records=first.records(1), elapsed_s=100.0, info={"k": 1})
    assert sorted(resumed.rounds) == [1] and resumed.elapsed_s() >= 100.0
    summary = resumed.finish({}, status="completed")
    assert summary["rounds"] == 1 and summary["wall_time_s"] >= 100.0 and summary["k"] == 1
