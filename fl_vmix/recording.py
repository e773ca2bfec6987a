"""Per-round results of a run, written to its folder after every round so an interrupted run keeps them,
and the checkpoint from which an interrupted run continues.

Files: ``config.json`` (resolved experiment), ``metrics.json`` (one record per round, with every
client's metrics and failures), ``metrics.csv`` (aggregated, one row per round), ``clients.csv`` (one
row per client and round), ``summary.json``, ``model.pt`` (final global weights), ``accuracy.png``,
``checkpoint.pt`` (:class:`RunCheckpoint`: what the server needs to continue after its round) and,
with ``tensorboard=true``, ``tensorboard/`` (every round's metrics as TensorBoard scalars).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_vmix.tables import csv_text

if TYPE_CHECKING:
    import torch

ROUND_COLUMNS = [
    "round",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "central_accuracy",
    "vfe_corrected",
    "vfe_reference",
    "ssim",
    "psnr",
    "epsilon",
    "clients_ok",
    "clients_failed",
    "round_time_s",
]


def round_epsilon(record: dict[str, Any]) -> float | None:
    """The run's cumulative epsilon after a round: the server accountant's (central DP), else the
    largest client's (DP-SGD, local DP on images); None where no method is DP."""
    if "server_dp" in record:
        return float(record["server_dp"]["epsilon"])
    values = [c["epsilon"] for c in record.get("clients", {}).values() if "epsilon" in c]
    return max(values) if values else None


def read_json(path: Path) -> Any:
    """A run file's content, or None while it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def atomic_write_text(path: Path, text: str) -> None:
    """Readers (the launcher's progress display) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# Metrics of metrics.csv that TensorBoard shows, under these tags.
TENSORBOARD_TAGS = {
    "eval_accuracy": "accuracy/federated_eval",
    "central_accuracy": "accuracy/central_eval",
    "train_accuracy": "accuracy/train",
    "eval_loss": "loss/federated_eval",
    "train_loss": "loss/train",
    "vfe_corrected": "privacy/vfe_corrected",
    "vfe_reference": "privacy/vfe_reference",
    "ssim": "privacy/ssim",
    "psnr": "privacy/psnr",
    "epsilon": "privacy/epsilon",
    "clients_ok": "clients/ok",
    "clients_failed": "clients/failed",
    "round_time_s": "time/round_s",
}


class RunRecorder:
    """A run's files. ``records`` and ``elapsed_s`` continue a resumed run (from its checkpoint);
    ``info`` goes into ``summary.json`` as it is (how the keys were made, resumptions, ...)."""

    def __init__(
        self,
        output_dir: Path,
        cfg: dict[str, Any],
        *,
        records: dict[int, dict[str, Any]] | None = None,
        elapsed_s: float = 0.0,
        info: dict[str, Any] | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.rounds: dict[int, dict[str, Any]] = json.loads(json.dumps(records)) if records else {}
        self.rounds = {int(k): v for k, v in self.rounds.items()}
        self.started = time.time() - elapsed_s
        self.info = dict(info or {})
        self._tensorboard = tensorboard
        self._writer: Any = None
        atomic_write_text(self.output_dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True))

    def elapsed_s(self) -> float:
        """Seconds this run has taken, earlier attempts of a resumed run included."""
        return time.time() - self.started

    def records(self, up_to: int) -> dict[int, dict[str, Any]]:
        """A copy of the per-round records of rounds <= ``up_to`` (what a checkpoint after ``up_to`` holds)."""
        return {k: json.loads(json.dumps(v, default=float)) for k, v in self.rounds.items() if k <= up_to}

    def round(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "clients": {}, "failures": []})

    def start_round(self, server_round: int) -> None:
        self.round(server_round)["started"] = time.time()

    def record_replies(self, server_round: int, phase: str, metrics: list[dict[str, Any]], errors: list[str]) -> None:
        record = self.round(server_round)
        for client in metrics:
            pid = int(client.get("partition-id", -1))
            record["clients"].setdefault(str(pid), {}).update(
                {f"{phase}_{k}" if phase == "eval" else k: v for k, v in client.items()}
            )
        record["failures"].extend(f"{phase}: {e}" for e in errors)
        record[f"{phase}_ok"] = len(metrics)
        record[f"{phase}_failed"] = len(errors)

    def record_aggregate(self, server_round: int, phase: str, aggregated: dict[str, Any]) -> None:
        self.round(server_round)[phase] = aggregated

    def record_server_dp(self, server_round: int, epsilon: float, delta: float, releases: int) -> None:
        """The server accountant's cumulative guarantee after a round (central DP)."""
        self.round(server_round)["server_dp"] = {"epsilon": epsilon, "delta": delta, "releases": releases}

    def end_round(self, server_round: int, central: dict[str, float] | None) -> None:
        record = self.round(server_round)
        if central is not None:
            record["central"] = central
        if "started" in record:
            record["round_time_s"] = time.time() - record.pop("started")
        if server_round > 0:
            self.flush()
            if self._tensorboard:
                self.log_tensorboard(server_round)

    def log_tensorboard(self, server_round: int) -> None:
        """This round's row of metrics.csv as TensorBoard scalars (step = round)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # the optional extra: imported only when enabled

            # purge_step drops what an interrupted attempt logged past the round this one resumes from.
            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=server_round)
        row = next((r for r in self.round_rows() if r["round"] == server_round), None)
        if row is None:
            return
        for key, tag in TENSORBOARD_TAGS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(tag, value, server_round)
        self._writer.flush()

    # ----------------------------------------------------------------------------------------- files
    def round_rows(self) -> list[dict[str, Any]]:
        rows = []
        for number in sorted(self.rounds):
            r = self.rounds[number]
            if number == 0:
                continue
            train, evaluate = r.get("train", {}), r.get("evaluate", {})
            rows.append(
                {
                    "round": number,
                    "train_loss": train.get("train_loss"),
                    "train_accuracy": train.get("train_accuracy"),
                    "eval_loss": evaluate.get("loss"),
                    "eval_accuracy": evaluate.get("accuracy"),
                    "central_accuracy": r.get("central", {}).get("accuracy"),
                    "vfe_corrected": train.get("vfe_corrected"),
                    "vfe_reference": train.get("vfe_reference"),
                    "ssim": train.get("ssim"),
                    "psnr": train.get("psnr"),
                    "epsilon": round_epsilon(r),
                    "clients_ok": r.get("train_ok", 0),
                    "clients_failed": r.get("train_failed", 0) + r.get("eval_failed", 0),
                    "round_time_s": r.get("round_time_s"),
                }
            )
        return rows

    def flush(self) -> None:
        records = [self.rounds[k] for k in sorted(self.rounds)]
        atomic_write_text(
            self.output_dir / "metrics.json", json.dumps(records, indent=2, sort_keys=True, default=float)
        )
        rows = self.round_rows()
        atomic_write_text(self.output_dir / "metrics.csv", csv_text(ROUND_COLUMNS, rows))
        client_rows = [
            {"round": number, "partition_id": pid, **values}
            for number in sorted(self.rounds)
            for pid, values in sorted(self.rounds[number]["clients"].items(), key=lambda kv: int(kv[0]))
        ]
        columns = ["round", "partition_id"] + sorted(
            {k for row in client_rows for k in row} - {"round", "partition_id"}
        )
        atomic_write_text(self.output_dir / "clients.csv", csv_text(columns, client_rows))

    def finish(self, state_dict: dict[str, Any], status: str = "completed", error: str | None = None) -> dict[str, Any]:
        import torch

        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        torch.save(state_dict, self.output_dir / "model.pt")
        rows = self.round_rows()
        last = rows[-1] if rows else {}
        accuracies = [r["eval_accuracy"] for r in rows if r["eval_accuracy"] is not None]
        summary = {
            "status": status,
            "error": error,
            "experiment": self.cfg.get("experiment"),
            "final_accuracy": last.get("eval_accuracy"),
            "final_loss": last.get("eval_loss"),
            "best_accuracy": max(accuracies) if accuracies else None,
            "final_central_accuracy": last.get("central_accuracy"),
            "rounds": len(rows),
            "wall_time_s": self.elapsed_s(),
            "mean_round_time_s": _mean([r["round_time_s"] for r in rows]),
            "vfe_corrected": last.get("vfe_corrected"),
            "vfe_reference": last.get("vfe_reference"),
            "ssim": last.get("ssim"),
            "psnr": last.get("psnr"),
            "epsilon": last.get("epsilon"),
            "delta": self.cfg.get("privacy", {}).get("delta"),
            "client_failures": sum(r["clients_failed"] for r in rows),
            **self.info,
            "config": self.cfg,
        }
        atomic_write_text(
            self.output_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=float)
        )
        self.plot(rows)
        return summary

    def plot(self, rows: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        rounds = [r["round"] for r in rows]
        for key, label in [
            ("eval_accuracy", "federated eval (client test splits)"),
            ("train_accuracy", "train"),
            ("central_accuracy", "central eval"),
        ]:
            values = [r[key] for r in rows]
            if any(v is not None for v in values):
                ax.plot(rounds, [float("nan") if v is None else v for v in values], marker="o", label=label)
        privacy = self.cfg.get("privacy", {}).get("method", "?")
        ax.set(
            xlabel="round",
            ylabel="accuracy",
            title=f"{self.cfg.get('dataset', {}).get('name')} / {privacy}",
            ylim=(0, 1),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.output_dir / "accuracy.png")
        plt.close(fig)


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------ checkpoint
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A run folder that cannot be resumed; the message says why and what to do."""


@dataclass(frozen=True)
class RunCheckpoint:
    """What a run needs to continue after ``round``, exactly as if it had not stopped.

    ``arrays``: the global weights after ``round``. ``strategy``: the Flower strategy's own state
    (FedAvgM's momentum, a DP wrapper's accountant, ...), as tensors and JSON text
    (:mod:`fl_vmix.apps.checkpoint`). ``records``: the recorder's per-round records up to ``round``.
    ``rng``: the server's random states (:func:`rng_state`). ``run_uid`` names the run to the clients,
    which keep their own state (DP-SGD's accountant) per run and round. ``config``: the experiment.
    """

    round: int
    arrays: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    records: dict[int, dict[str, Any]]
    rng: dict[str, Any]
    run_uid: str
    elapsed_s: float
    config: dict[str, Any]
    resumed_at: tuple[int, ...] = field(default=())  # rounds after which earlier attempts stopped

    def to_payload(self) -> dict[str, Any]:
        """Only types ``torch.load(weights_only=True)`` reads back: tensors, containers, text and numbers."""
        return {
            "format": CHECKPOINT_FORMAT,
            "round": self.round,
            "arrays": dict(self.arrays),
            "strategy": self.strategy,
            "records": json.dumps({str(k): v for k, v in self.records.items()}, default=float),
            "rng": self.rng,
            "run_uid": self.run_uid,
            "elapsed_s": self.elapsed_s,
            "config": json.dumps(self.config, sort_keys=True),
            "resumed_at": list(self.resumed_at),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RunCheckpoint:
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {payload.get('format')!r} is not {CHECKPOINT_FORMAT}: it was written by another "
                "fl_vmix version; resume it with that version"
            )
        return cls(
            round=int(payload["round"]),
            arrays=dict(payload["arrays"]),
            strategy=dict(payload["strategy"]),
            records={int(k): v for k, v in json.loads(payload["records"]).items()},
            rng=dict(payload["rng"]),
            run_uid=str(payload["run_uid"]),
            elapsed_s=float(payload["elapsed_s"]),
            config=json.loads(payload["config"]),
            resumed_at=tuple(int(r) for r in payload["resumed_at"]),
        )


def save_checkpoint(folder: Path, checkpoint: RunCheckpoint) -> Path:
    """Write ``checkpoint.pt`` atomically: a run killed while writing keeps the previous checkpoint."""
    import torch

    path = Path(folder) / CHECKPOINT_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint.to_payload(), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(folder: Path) -> RunCheckpoint:
    import torch

    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: only a run that finished at least one round with checkpoint_every set (the "
            "default saves every round) can be resumed; start it anew instead"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file (torch's own message suggests unsafe loading: not here)
        raise CheckpointError(
            f"{path} cannot be read ({type(err).__name__}): it is truncated or not an fl_vmix checkpoint; start the "
            "run anew"
        ) from err
    return RunCheckpoint.from_payload(payload)


def rng_state(numpy: bool = True) -> dict[str, Any]:
    """The server's random states: Python's (Flower samples nodes with it), NumPy's (Flower's central DP
    noise) and torch's, CPU and CUDA. ``numpy=False`` leaves NumPy's out (``None``): a secretly seeded noise
    generator must not reach a file (Mersenne Twister's state also gives back every earlier draw)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    numpy_json = None
    if numpy:
        numpy_state = np.random.get_state(legacy=False)
        assert isinstance(numpy_state, dict)  # legacy=False always gives the dict form
        numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
        numpy_json = json.dumps(numpy_state)
    return {
        "python": [version, list(internal), gauss],
        "numpy": numpy_json,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put :func:`rng_state`'s states back (NumPy's only where it was saved)."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["numpy"] is not None:
        numpy_state = json.loads(state["numpy"])
        numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
