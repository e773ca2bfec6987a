import csv
from pathlib import Path

import pytest

from fl_vmix.apps.recorder import RunRecorder
from fl_vmix.apps.server_app import initial_model
from fl_vmix.evaluation.report import COLUMNS, ReportError, collect_rows, find_runs, main, plot_accuracy_against


def finished_run(folder: Path, cfg: dict, accuracy: float, vfe: float, ssim: float, epsilon: float | None = None) -> Path:
    """A run folder written by the same recorder the ServerApp uses, for a two-round run."""
    recorder = RunRecorder(folder, {**cfg, "output_dir": str(folder)})
    for server_round in (1, 2):
        client = {"partition-id": 0, "num-examples": 10, "train_loss": 1.0, "train_accuracy": accuracy, "vfe_corrected": vfe,
                  "vfe_reference": vfe * 2, "ssim": ssim, "psnr": 20.0}
        if epsilon is not None:
            client["epsilon"] = epsilon * server_round
        recorder.start_round(server_round)
        recorder.record_replies(server_round, "train", [client], [])
        recorder.record_aggregate(server_round, "train", {k: v for k, v in client.items() if k != "partition-id"})
        recorder.record_replies(server_round, "eval", [{"partition-id": 0, "loss": 1.0, "accuracy": accuracy, "num-examples": 5}], [])
        recorder.record_aggregate(server_round, "evaluate", {"loss": 1.0, "accuracy": accuracy})
        recorder.end_round(server_round, None)
    recorder.finish(initial_model(cfg).state_dict())
    return folder


def test_report_on_two_finished_runs(tiny_experiment, tmp_path):
    clear = finished_run(tmp_path / "runs" / "0", tiny_experiment("privacy=none"), accuracy=0.9, vfe=1.0, ssim=1.0)
    finished_run(tmp_path / "runs" / "1", tiny_experiment("privacy=dp_sgd"), accuracy=0.6, vfe=1.0, ssim=1.0, epsilon=1.5)
    assert main(["collect", "--experiment", "tiny", "--out", str(tmp_path / "results"), str(clear.parent)]) == 0
    out = tmp_path / "results" / "tiny"
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == COLUMNS
    by_method = {r["method"]: r for r in rows}
    assert float(by_method["dp_sgd"]["accuracy_loss_pp"]) == pytest.approx(30.0)
    assert float(by_method["dp_sgd"]["epsilon"]) == pytest.approx(3.0)  # cumulative after round 2
    assert float(by_method["none"]["accuracy_loss_pp"]) == 0.0
    for name in ("report.md", "accuracy_vs_vfe.png", "accuracy_vs_ssim.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    assert "| dp_sgd |" in (out / "report.md").read_text()


def test_mixed_datasets_are_refused(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    finished_run(tmp_path / "a", cfg, 0.5, 1.0, 1.0)
    finished_run(tmp_path / "b", {**cfg, "dataset": {**cfg["dataset"], "name": "cifar10"}}, 0.5, 1.0, 1.0)
    with pytest.raises(ReportError, match="mix datasets.*one report per dataset"):
        collect_rows(find_runs([tmp_path]))


def test_no_runs_and_unknown_metric(tiny_experiment, tmp_path):
    with pytest.raises(ReportError, match="no finished runs"):
        find_runs([tmp_path])
    rows = collect_rows([finished_run(tmp_path / "a", tiny_experiment(), 0.5, 1.0, 1.0)])
    with pytest.raises(ReportError, match="unknown metric 'entropy'.*vfe"):
        plot_accuracy_against(rows, "entropy", tmp_path / "x.png")
