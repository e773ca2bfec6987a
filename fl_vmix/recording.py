"""Per-round results of a run, written to its folder after every round so an interrupted run keeps them.

Files: ``config.json`` (resolved experiment), ``metrics.json`` (one record per round, with every
client's metrics and failures), ``metrics.csv`` (aggregated, one row per round), ``clients.csv`` (one
row per client and round), ``summary.json``, ``model.pt`` (final global weights) and ``accuracy.png``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fl_vmix.tables import csv_text

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


class RunRecorder:
    def __init__(self, output_dir: Path, cfg: dict[str, Any]) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.rounds: dict[int, dict[str, Any]] = {}
        self.started = time.time()
        atomic_write_text(self.output_dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True))

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
            "wall_time_s": time.time() - self.started,
            "mean_round_time_s": _mean([r["round_time_s"] for r in rows]),
            "vfe_corrected": last.get("vfe_corrected"),
            "vfe_reference": last.get("vfe_reference"),
            "ssim": last.get("ssim"),
            "psnr": last.get("psnr"),
            "epsilon": last.get("epsilon"),
            "delta": self.cfg.get("privacy", {}).get("delta"),
            "client_failures": sum(r["clients_failed"] for r in rows),
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
