"""``python -m fl_vmix`` / ``fl-vmix``: compose the Hydra config, check it, run it with ``flwr run``.

Examples::

    python -m fl_vmix                                   # defaults from fl_vmix/conf/
    python -m fl_vmix privacy=none                      # the same experiment on clear images
    python -m fl_vmix dataset=retinamnist model=resnet18 num_rounds=20
    python -m fl_vmix --multirun privacy.target_ratio=2,3,5
    python -m fl_vmix preset=paper_cifar10 device=cuda engine.num_gpus_per_client=0.5
    python -m fl_vmix resume=outputs/2025-01-01/12-00-00 num_rounds=20   # continue a run from its checkpoint

``resume=<run dir>`` continues the run recorded in that folder (its ``config.json``) from its
``checkpoint.pt``, in the same folder; only ``num_rounds`` and execution settings (``device``, ``checkpoint_every``,
``tensorboard``, ``engine.*``) may be given with it.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fl_vmix.checks import check_experiment
from fl_vmix.experiment import RESUMABLE, ConfigError, Experiment, conf_dir, from_recorded
from fl_vmix.recording import CHECKPOINT_FILE, CheckpointError, load_checkpoint, read_json
from fl_vmix.runtime.launcher import launch
from fl_vmix.tables import format_value

_failed_jobs: list[int] = []  # exit codes of the failed jobs of a --multirun (Hydra runs them in this process)
console = Console(stderr=True, soft_wrap=True)  # messages keep paths and fixes on one line, to copy
logging.getLogger("flwr").propagate = False  # Hydra and Flower would both print every line


def _absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """The apps run from Flower's app folder with another working directory: paths must be absolute."""
    for key in ("root", "cache_dir"):
        value = cfg["dataset"].get(key)
        if value not in (None, "", "???"):
            cfg["dataset"][key] = str(Path(value).expanduser().resolve())
    return cfg


def summary_table(summary: dict[str, Any]) -> Table:
    cfg = summary.get("config", {})
    table = Table(title=f"fl_vmix run: {cfg.get('experiment')}", show_header=False)
    rows = [
        ("dataset / model", f"{cfg.get('dataset', {}).get('name')} / {cfg.get('model', {}).get('name')}"),
        ("privacy", str(cfg.get("privacy", {}).get("method"))),
        ("clients x rounds", f"{cfg.get('num_clients')} x {summary.get('rounds')}"),
        ("final accuracy (federated eval)", format_value(summary.get("final_accuracy"), 4)),
        ("best accuracy", format_value(summary.get("best_accuracy"), 4)),
        (
            "VFE corrected / reference",
            f"{format_value(summary.get('vfe_corrected'), 4)} / {format_value(summary.get('vfe_reference'), 4)}",
        ),
        ("client failures", str(summary.get("client_failures"))),
        ("wall time", f"{summary.get('wall_time_s', 0):.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    # The folder is what the user copies next: a row of its own that wraps rather than ending in an ellipsis.
    table.add_row("outputs", Text(str(cfg.get("output_dir")), overflow="fold"))
    table.add_row("client keys", str(summary.get("keys")))
    for warning in summary.get("warnings", []):  # randomness anyone who knows the seed can regenerate
        table.add_row("[bold red]warning[/]", f"[bold red]{escape(warning)}[/]")
    return table


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the run and its Flower processes, even where the shell started us with
    SIGINT ignored (background jobs of non-interactive shells inherit SIG_IGN)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def resume_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The recorded experiment of ``run_dir`` with the allowed ``overrides`` (values as Hydra composed them in
    ``cfg``), set to continue in that folder. ConfigError/CheckpointError when it cannot be resumed."""
    recorded = read_json(run_dir / "config.json")
    if recorded is None:
        raise ConfigError(f"resume={run_dir}: no config.json there: name the folder of a run started by fl_vmix")
    checkpoint = load_checkpoint(run_dir)
    experiment = from_recorded(recorded)  # settings added since the run started come from conf/
    tree = experiment.to_dict()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra."):
            continue
        if not key.startswith(RESUMABLE) or key == "engine":
            raise ConfigError(
                f"resume: {override!r} cannot change a run that continues: only num_rounds, checkpoint_every, "
                "device, tensorboard and engine.* settings may be given with resume=; start a new run "
                "for other settings"
            )
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        value = OmegaConf.select(cfg, key)
        node[parts[-1]] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if tree["num_rounds"] <= checkpoint.round:
        raise ConfigError(
            f"resume={run_dir}: the run has {checkpoint.round} rounds (its checkpoint) and num_rounds="
            f"{tree['num_rounds']}: pass num_rounds=N with N > {checkpoint.round} to continue it"
        )
    tree["resume"] = tree["output_dir"] = str(run_dir)
    return tree


def run_experiment(cfg: dict[str, Any], output_dir: Path) -> int:
    """Parse, check and launch a composed config; the exit status (2 for a bad setting)."""
    _stop_on_signals()
    try:
        experiment = Experiment.from_dict(_absolute_paths(cfg)).replace(output_dir=str(output_dir))
        check_experiment(experiment)
    except (ConfigError, ValueError) as err:
        console.print(f"[bold red]configuration error:[/] {escape(str(err))}", highlight=False)
        return 2
    total = experiment.num_rounds
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"{experiment.experiment} rounds", total=total, status="starting Flower...")

        def on_progress(records: list[dict[str, Any]]) -> None:
            done = [r for r in records if r.get("round", 0) > 0 and "evaluate" in r]
            if done:
                last = done[-1]
                acc = last["evaluate"].get("accuracy")
                status = f"eval acc {acc:.3f}" if acc is not None else ""
                failed = last.get("train_failed", 0) + last.get("eval_failed", 0)
                progress.update(
                    task, completed=len(done), status=status + (f"  [red]{failed} client(s) failed" if failed else "")
                )

        result = launch(experiment, output_dir, on_progress=on_progress)
    if result.summary is not None:
        console.print(summary_table(result.summary))
        failures = [f for r in (read_json(output_dir / "metrics.json") or []) for f in r.get("failures", [])]
        if failures:
            console.print(
                f"[yellow]{len(failures)} client failure(s); first:[/] {escape(str(failures[0]))}", highlight=False
            )
    resumable = (output_dir / CHECKPOINT_FILE).exists()
    how_to_resume = f"; continue it with: python -m fl_vmix resume={output_dir}" if resumable else ""
    if result.interrupted:
        console.print(
            "[bold yellow]interrupted[/]: Flower's processes were stopped; per-round results so far are in "
            f"{escape(str(output_dir) + how_to_resume)}",
            markup=True,
            highlight=False,
        )
        return result.returncode
    if result.returncode != 0:
        reason = "timed out (engine.timeout_s)" if result.timed_out else "did not complete"
        if result.summary and result.summary.get("error"):
            console.print(
                f"[bold red]server error:[/] {escape(str(result.summary['error']))} "
                f"(traceback: {escape(str(output_dir / 'error.txt'))})",
                highlight=False,
            )
        tail = result.log_file.read_text(errors="replace").splitlines()[-25:] if result.log_file.exists() else []
        console.print(f"[bold red]run {reason}[/]; last lines of {escape(str(result.log_file))}:", highlight=False)
        console.print("\n".join(tail), markup=False, highlight=False)
        if resumable:
            console.print(how_to_resume.removeprefix("; "), markup=False, highlight=False)
    return result.returncode


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> int:
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    mode = HydraConfig.get().mode
    if container.get("resume"):
        run_dir = Path(str(container["resume"])).expanduser().resolve()
        try:
            if mode is not None and mode.name == "MULTIRUN":
                raise ConfigError("resume= continues one run: leave out --multirun")
            container = resume_config(run_dir, cfg, list(HydraConfig.get().overrides.task))
        except (ConfigError, CheckpointError) as err:
            console.print(f"[bold red]cannot resume:[/] {escape(str(err))}", highlight=False)
            sys.exit(2)
        output_dir = run_dir
    else:
        output_dir = Path(container.get("output_dir") or HydraConfig.get().runtime.output_dir).resolve()
    container["output_dir"] = str(output_dir)
    code = run_experiment(container, output_dir)
    if code == 2 and not container.get("resume"):
        _discard_unused_run_dir(output_dir)
    if code != 0 and (mode is None or mode.name != "MULTIRUN"):
        sys.exit(code)
    if code != 0:
        _failed_jobs.append(code)  # a sweep runs its other jobs, then exits non-zero (main)
    return code


def _discard_unused_run_dir(output_dir: Path) -> None:
    """A refused configuration leaves no run folder behind: remove the one Hydra made for it when it holds only
    Hydra's own files (``.hydra/`` and the job log), and its date folder once that is empty. A folder with
    anything else in it (a chosen ``output_dir`` with earlier results) is kept as it is."""
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if not output_dir.is_dir() or not {p.name for p in output_dir.iterdir()} <= hydra_files:
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    parent = output_dir.parent  # outputs/<date>/, Hydra's default layout; never a folder the user named
    if parent.parent.name == "outputs" and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


def _hydra_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main() -> None:
    # A resumed run continues in its own folder: Hydra's job log goes there too, and Hydra does not write a
    # second .hydra/ over the one of the run's first start.
    resume = [arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("resume=")]
    if resume and not any(arg.startswith("hydra.run.dir=") for arg in sys.argv[1:]):
        folder = str(Path(resume[-1].strip("'\"")).expanduser().resolve())
        if not Path(folder).is_dir():  # Hydra would create it for its log before the resume is refused
            console.print(
                f"[bold red]cannot resume:[/] {escape(folder)} is not a folder: name the folder of a run "
                "started by fl_vmix (outputs/<date>/<time>)",
                highlight=False,
            )
            sys.exit(2)
        sys.argv += [f"hydra.run.dir={_hydra_quote(folder)}", "hydra.output_subdir=null"]
    hydra_main()
    if _failed_jobs:
        console.print(f"[bold red]{len(_failed_jobs)} run(s) of the sweep failed[/] (their errors are above)")
        sys.exit(_failed_jobs[0])


if __name__ == "__main__":
    main()
