"""The server's checkpoint: what a Flower strategy holds between rounds, and when it is written.

A strategy is configured by the experiment and rebuilt from it on resume; what it *learns* during a run
must be carried over. Flower keeps that in plain attributes: FedAvgM its ``current_arrays`` and
``momentum_vector`` (``flwr/serverapp/strategy/fedavgm.py``), FedOpt-style strategies their moment
lists, the DP wrappers their ``current_arrays`` and their accountant (``state_dict`` /
``load_state_dict``). :func:`strategy_state` walks the wrapper chain (``.strategy``) and saves every
attribute holding an ``ArrayRecord``, a list of NumPy arrays or an accountant; everything else is
configuration. :class:`Checkpointer` snapshots that state, the global weights, the recorder's
records and the RNG states after every round (references and small copies: cheap) and writes the
snapshot every ``checkpoint_every`` rounds, after the last round, and when the run stops early.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fl_vmix.recording import RunCheckpoint, RunRecorder, rng_state, save_checkpoint

logger = logging.getLogger("fl_vmix.server")


def strategy_chain(strategy: Strategy) -> list[Strategy]:
    """The strategy and every strategy it wraps (Flower's DP wrappers and ours hold theirs in ``.strategy``)."""
    chain = [strategy]
    while isinstance(getattr(chain[-1], "strategy", None), Strategy):
        chain.append(chain[-1].strategy)  # type: ignore[attr-defined]
    return chain


def _is_accountant(value: object) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def _is_array_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, np.ndarray) for v in value)


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The learned state of ``strategy`` and of every strategy it wraps, as tensors and JSON text."""
    state: dict[str, Any] = {}
    for depth, member in enumerate(strategy_chain(strategy)):
        entry: dict[str, Any] = {}
        for name, value in sorted(vars(member).items()):
            if isinstance(value, ArrayRecord):
                entry[name] = {"kind": "arrays", "value": dict(value.to_torch_state_dict())}
            elif _is_array_list(value):
                entry[name] = {"kind": "ndarrays", "value": [torch.from_numpy(np.array(v)) for v in value]}
            elif _is_accountant(value):
                entry[name] = {"kind": "accountant", "value": json.dumps(value.state_dict())}
        state[f"{depth}:{type(member).__name__}"] = entry
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Put a saved :func:`strategy_state` back into a strategy built from the same experiment."""
    chain = strategy_chain(strategy)
    expected = [f"{depth}:{type(member).__name__}" for depth, member in enumerate(chain)]
    if sorted(state) != sorted(expected):
        raise ValueError(
            f"the checkpoint holds the state of strategies {sorted(state)}, this experiment builds {expected}: "
            "resume with the experiment the run was started with"
        )
    for label, member in zip(expected, chain, strict=True):
        for name, saved in state[label].items():
            if saved["kind"] == "arrays":
                setattr(member, name, ArrayRecord(dict(saved["value"])))
            elif saved["kind"] == "ndarrays":
                setattr(member, name, [t.numpy() for t in saved["value"]])
            else:
                getattr(member, name).load_state_dict(json.loads(saved["value"]))


class Checkpointer:
    """Snapshots the server's state after every round and writes ``checkpoint.pt`` when it should."""

    def __init__(
        self,
        folder: Path,
        every: int,
        last_round: int,
        strategy: Strategy,
        recorder: RunRecorder,
        run_uid: str,
        config: dict[str, Any],
        resumed_at: tuple[int, ...] = (),
        numpy_rng: bool = True,
    ) -> None:
        """``numpy_rng=False``: the checkpoint leaves out NumPy's state (central DP's secret noise generator)."""
        self.folder, self.every, self.last_round = folder, every, last_round
        self.numpy_rng = numpy_rng
        self.strategy, self.recorder, self.run_uid, self.config = strategy, recorder, run_uid, config
        self.resumed_at = resumed_at
        self.pending: RunCheckpoint | None = None
        self.written_round = 0

    def round_done(self, server_round: int, arrays: ArrayRecord) -> None:
        """Called after the round's evaluation: the state now is the state before the next round."""
        self.pending = RunCheckpoint(
            round=server_round,
            arrays=dict(arrays.to_torch_state_dict()),
            strategy=strategy_state(self.strategy),
            records=self.recorder.records(server_round),
            rng=rng_state(self.numpy_rng),
            run_uid=self.run_uid,
            elapsed_s=self.recorder.elapsed_s(),
            config=self.config,
            resumed_at=self.resumed_at,
        )
        if server_round % self.every == 0 or server_round >= self.last_round:
            self.write()

    def write(self) -> int | None:
        """Write the latest snapshot if it is newer than the file; the round written, if any."""
        if self.pending is None or self.pending.round <= self.written_round:
            return None
        save_checkpoint(self.folder, self.pending)
        self.written_round = self.pending.round
        logger.info("checkpoint after round %d written to %s", self.written_round, self.folder)
        return self.written_round
