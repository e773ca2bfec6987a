import csv
import json
import math
from pathlib import Path

import pytest

from fl_vmix.evaluation.report import (
    COLUMNS,
    RUN_FILES,
    ReportError,
    collect_rows,
    exceeds_spread,
    find_runs,
    main,
    plot_accuracy_against,
    setting_rows,
)
from fl_vmix.experiment import Experiment
from fl_vmix.factory import initial_model
from fl_vmix.recording import RunRecorder


def finished_run(
    folder: Path,
    experiment: Experiment,
    accuracy: float,
    vfe: float,
    ssim: float,
    epsilon: float | None = None,
    client_epsilons: tuple[float, ...] = (1.0,),
) -> Path:
    """A run folder written by the same recorder the ServerApp uses, for a two-round run: one client per entry of
    ``client_epsilons``, whose epsilon after round r is ``epsilon * factor * r``."""
    recorder = RunRecorder(folder, experiment.replace(output_dir=str(folder)).to_dict())
    for server_round in (1, 2):
        clients = []
        for partition, factor in enumerate(client_epsilons):
            client = {
                "partition-id": partition,
                "num-examples": 10,
                "train_loss": 1.0,
                "train_accuracy": accuracy,
                "vfe_corrected": vfe,
                "vfe_reference": vfe * 2,
                "ssim": ssim,
                "psnr": 20.0,
            }
            if epsilon is not None:
                client["epsilon"] = epsilon * factor * server_round
            clients.append(client)
        recorder.start_round(server_round)
        recorder.record_replies(server_round, "train", clients, [])
        aggregate = {k: v for k, v in clients[0].items() if k not in ("partition-id", "epsilon")}
        recorder.record_aggregate(server_round, "train", aggregate)
        recorder.record_replies(
            server_round, "eval", [{"partition-id": 0, "loss": 1.0, "accuracy": accuracy, "num-examples": 5}], []
        )
        recorder.record_aggregate(server_round, "evaluate", {"loss": 1.0, "accuracy": accuracy})
        recorder.end_round(server_round, None)
    recorder.finish(initial_model(experiment).state_dict())
    return folder


def test_report_on_two_finished_runs(tiny_experiment, tmp_path):
    clear = finished_run(tmp_path / "runs" / "0", tiny_experiment("privacy=none"), accuracy=0.9, vfe=1.0, ssim=1.0)
    finished_run(
        tmp_path / "runs" / "1", tiny_experiment("privacy=dp_sgd"), accuracy=0.6, vfe=1.0, ssim=1.0, epsilon=1.5
    )
    assert main(["collect", "--experiment", "tiny", "--out", str(tmp_path / "results"), str(clear.parent)]) == 0
    out = tmp_path / "results" / "tiny"
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == COLUMNS
    by_method = {r["method"]: r for r in rows}
    assert float(by_method["dp_sgd"]["accuracy_loss_pp"]) == pytest.approx(30.0)
    assert by_method["dp_sgd"]["baseline_run"] == "runs/0", "results.csv names the committed copy of the clear run"
    for run in ("0", "1"):  # the small files of each run are kept beside the report; weights are not
        assert sorted(p.name for p in (out / "runs" / run).iterdir()) == sorted(RUN_FILES)
    assert float(by_method["dp_sgd"]["epsilon"]) == pytest.approx(3.0)  # cumulative after round 2
    assert float(by_method["none"]["accuracy_loss_pp"]) == 0.0
    for name in ("report.md", "accuracy_vs_vfe.png", "accuracy_vs_ssim.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| dp_sgd |" in report
    # Every row says what its epsilon is a unit of (nothing for methods without DP), and the DP rows say whom it
    # protects against and what else their clients sent.
    assert by_method["dp_sgd"]["epsilon_unit"] == "example" and by_method["none"]["epsilon_unit"] == ""
    assert "3.000 (example)" in report and "## What the epsilons protect" in report
    assert "train_loss (un-noised forward passes" in by_method["dp_sgd"]["leaks"]


def test_rows_differing_outside_privacy_are_labelled_and_compared_with_their_own_clear_run(tiny_experiment, tmp_path):
    # The four-rows-read-the-same case: one privacy setting under two optimisers and two models.
    runs = tmp_path / "runs"
    finished_run(runs / "clear", tiny_experiment("privacy=none"), 0.50, 1.0, 1.0)
    finished_run(runs / "clear_inv", tiny_experiment("privacy=none", "model.invariant=true"), 0.43, 1.0, 1.0)
    finished_run(runs / "vm", tiny_experiment(), 0.40, 3.0, 0.2)
    finished_run(runs / "vm_inv", tiny_experiment("model.invariant=true"), 0.43, 3.0, 0.2)
    finished_run(runs / "vm_sgd", tiny_experiment("optimizer=sgd"), 0.31, 3.0, 0.2)
    rows = {Path(r["run_dir"]).name: r for r in collect_rows(find_runs([runs]))}
    labels = [r["label"] for r in rows.values()]
    assert len(set(labels)) == len(labels), f"rows must not read the same: {labels}"
    # What sets a row apart is named; the usual values (adam, the plain model) are left out.
    assert "optimizer=sgd" in rows["vm_sgd"]["label"] and "optimizer" not in rows["vm"]["label"]
    assert "model.invariant=true" in rows["vm_inv"]["label"] and "model.invariant" not in rows["vm"]["label"]
    # Each loss against the clear run with the same model and optimiser (computed here by hand).
    assert rows["vm"]["accuracy_loss_pp"] == pytest.approx(100 * (0.50 - 0.40))
    assert rows["vm_inv"]["accuracy_loss_pp"] == pytest.approx(0.0) and rows["vm_inv"]["baseline_run"].endswith(
        "clear_inv"
    )
    assert rows["clear_inv"]["accuracy_loss_pp"] == 0.0
    assert rows["vm_sgd"]["accuracy_loss_pp"] != rows["vm_sgd"]["accuracy_loss_pp"]  # NaN: no clear SGD run
    assert rows["vm_sgd"]["baseline_run"] == ""


def test_an_invariant_model_with_another_region_is_another_model(tiny_experiment, tmp_path):
    runs = tmp_path / "runs"
    finished_run(runs / "clear_inv", tiny_experiment("privacy=none", "model.invariant=true"), 0.43, 1.0, 1.0)
    finished_run(runs / "vm16_inv", tiny_experiment("model.invariant=true", "privacy.region_size=16"), 0.40, 3.0, 0.2)
    rows = {Path(r["run_dir"]).name: r for r in collect_rows(find_runs([runs]))}
    assert rows["vm16_inv"]["baseline_run"] == "", (
        "the clear invariant model sorts 8-px regions, this one 16-px regions"
    )


def test_mixed_datasets_are_refused(tiny_experiment, tmp_path):
    experiment = tiny_experiment()
    finished_run(tmp_path / "a", experiment, 0.5, 1.0, 1.0)
    cifar = experiment.replace(
        dataset=experiment.dataset.__class__(**{**experiment.dataset.__dict__, "name": "cifar10"})
    )
    finished_run(tmp_path / "b", cifar, 0.5, 1.0, 1.0)
    with pytest.raises(ReportError, match="mix datasets.*one report per dataset"):
        collect_rows(find_runs([tmp_path]))


def test_no_runs_and_unknown_metric(tiny_experiment, tmp_path):
    with pytest.raises(ReportError, match="no finished runs"):
        find_runs([tmp_path])
    rows = collect_rows([finished_run(tmp_path / "a", tiny_experiment(), 0.5, 1.0, 1.0)])
    with pytest.raises(ReportError, match="unknown metric 'entropy'.*vfe"):
        plot_accuracy_against(rows, "entropy", tmp_path / "x.png")


def test_seeds_of_a_setting_are_aggregated_and_only_gaps_beyond_the_spread_are_findings(tiny_experiment, tmp_path):
    runs = tmp_path / "sweep"
    accuracies = {
        "none": (0.50, 0.52, 0.54),
        "3.0": (0.40, 0.42, 0.44),
        "5.0": (0.41, 0.43, 0.45),
        "1.5": (0.30, 0.31, 0.29),
    }
    for name, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            overrides = ["privacy=none"] if name == "none" else [f"privacy.target_ratio={name}"]
            finished_run(runs / f"{name}_{seed}", tiny_experiment(*overrides, f"seed={seed}"), accuracy, 3.0, 0.2)
    assert main(["collect", "--experiment", "seeds", "--out", str(tmp_path / "results"), str(runs)]) == 0
    out = tmp_path / "results" / "seeds"
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12, "results.csv keeps one row per run"
    by_setting: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    assert len(by_setting) == 4 and all(len(v) == 3 for v in by_setting.values())
    assert not any("seed" in label for label in by_setting), "a setting is labelled without its seed"
    default = next(v for k, v in by_setting.items() if "target_ratio=3.0" in k)
    assert {r["seed"] for r in default} == {"0", "1", "2"} and {r["seeds"] for r in default} == {"3"}
    assert float(default[0]["accuracy_mean"]) == pytest.approx(0.42)
    assert float(default[0]["accuracy_std"]) == pytest.approx(0.02)  # sample std of 0.40, 0.42, 0.44
    # Each seed's loss is against the clear run of the same seed: 10 pp every time, so no spread.
    assert float(default[0]["accuracy_loss_pp_mean"]) == pytest.approx(10.0)
    assert float(default[0]["accuracy_loss_pp_std"]) == pytest.approx(0.0, abs=1e-9)
    assert {r["baseline_run"] for r in default} == {f"runs/none_{seed}" for seed in range(3)}
    report = (out / "report.md").read_text()
    assert "| 3 | 0.420 ± 0.020 | 10.00 ± 0.00 |" in report
    # A loss reads as a loss: a signed "+10.0 pp" read as a gain.
    assert "accuracy 0.420 ± 0.020 (3 seed(s)), loss 10.0 ± 0.0 pp against its clear run" in report
    assert "+10.0" not in report
    assert "target_ratio=3.0 vs" in report and "within their spread: no difference." in report  # 0.42 vs 0.43
    assert "larger than their spread: a difference." in report  # 0.42 vs 0.30
    # The report rebuilt from its committed copies is the same report.
    assert main(["collect", "--experiment", "seeds", "--out", str(tmp_path / "results"), str(out / "runs")]) == 0
    assert (out / "report.md").read_text() == report


def test_one_seed_has_no_spread_and_makes_no_finding(tiny_experiment, tmp_path):
    finished_run(tmp_path / "a", tiny_experiment(), 0.404, 3.0, 0.2)
    finished_run(tmp_path / "b", tiny_experiment("privacy.target_ratio=5.0"), 0.402, 3.0, 0.2)
    settings = setting_rows(collect_rows(find_runs([tmp_path])))
    assert [s["seeds"] for s in settings] == [1, 1] and all(math.isnan(s["accuracy_std"]) for s in settings)
    assert exceeds_spread(settings[0], settings[1]) is None, "0.404 against 0.402 from one seed each is no finding"


def test_a_runs_epsilon_is_its_largest_clients(tiny_experiment, tmp_path):
    # Three clients per round with different epsilons: the run's guarantee is the weakest client's (the largest).
    finished_run(
        tmp_path / "runs" / "0", tiny_experiment("privacy=none"), accuracy=0.9, vfe=1.0, ssim=1.0
    )  # the clear run the DP run is compared with
    finished_run(
        tmp_path / "runs" / "1", tiny_experiment("privacy=dp_sgd", "num_clients=3"), accuracy=0.6, vfe=1.0, ssim=1.0,
        epsilon=1.0, client_epsilons=(0.5, 2.5, 1.0),
    )  # fmt: skip
    summary = json.loads((tmp_path / "runs" / "1" / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(5.0), "round 2: the largest client, 2.5 * 2 (not 1.0 nor 3.5/3)"
    rows = collect_rows(find_runs([tmp_path / "runs"]))
    by_method = {r["method"]: r for r in rows}
    assert by_method["dp_sgd"]["epsilon"] == pytest.approx(5.0)


def test_rows_with_derived_keys_say_so_in_their_guarantee_leaks_and_the_report(tiny_experiment, tmp_path):
    from fl_vmix.apps.keys import DERIVED_KEYS_WARNING

    runs = tmp_path / "runs"
    finished_run(runs / "clear", tiny_experiment("privacy=none"), 0.5, 1.0, 1.0)
    finished_run(runs / "derived", tiny_experiment("engine.simulation_keys=derived"), 0.4, 3.0, 0.2)
    finished_run(runs / "secret", tiny_experiment("engine.simulation_keys=random", "seed=1"), 0.4, 3.0, 0.2)
    assert main(["collect", "--experiment", "keys", "--out", str(tmp_path / "results"), str(runs)]) == 0
    out = tmp_path / "results" / "keys"
    with (out / "results.csv").open() as handle:
        rows = {Path(r["run_dir"]).name: r for r in csv.DictReader(handle)}
    assert rows["derived"]["guarantee"].endswith(DERIVED_KEYS_WARNING)
    assert "client keys (derivable from config.json's seed" in rows["derived"]["leaks"]
    assert "ssim (compares the protected training images with the clear ones)" in rows["derived"]["leaks"]
    for name in ("secret", "clear"):
        assert DERIVED_KEYS_WARNING not in rows[name]["guarantee"] and "client keys" not in rows[name]["leaks"]
    assert f"{DERIVED_KEYS_WARNING}." in (out / "report.md").read_text()
