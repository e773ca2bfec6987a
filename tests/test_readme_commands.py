"""The README's commands and snippets as a newcomer types them.

Every shell command of the README's ```bash blocks is listed in :data:`PLAN`, with how CI checks it: run
as written (a listing), run with its overrides checked by the same code a run checks first (parse, probe
of the model and the privacy method, the data), or the test that runs it elsewhere and why not here. A
README command that is not in the plan fails :func:`test_every_readme_command_has_a_plan`, so a new or
edited command gets a check. The ```python block after ``<!-- readme-test: library -->`` runs verbatim.
The loopback deployment's commands (README "Running on Flower's Deployment Engine") are run verbatim by
``tests/test_deployment.py``; they are left out here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_shared
from fl_vmix.checks import check_clients_fit, check_experiment, check_settings
from fl_vmix.experiment import compose

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEPLOYMENT = "## Running on Flower's Deployment Engine"

# How each command is checked. "overrides": parse and probe its fl_vmix overrides (what a run does before its
# first round; the Flower runs themselves are tests/test_simulation.py's). "run": run it here, as written.
# Otherwise the reason it is not run here.
PLAN: dict[str, str] = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'": "install: tests/test_packaging.py",
    "export FL_VMIX_DATA=$PWD/../shared/data": "the environment of every other command here",
    "python -m fl_vmix": "overrides",
    "python -m pytest": "the test suite itself",
    'python -m pytest -m "slow or not slow"': "the test suite itself",
    "ruff check . && ruff format --check . && mypy": "CI's lint step (.ci/run)",
    "python -m fl_vmix num_rounds=20 num_clients=10": "overrides",
    "python -m fl_vmix dataset=retinamnist model=resnet18": "overrides",
    "python -m fl_vmix privacy.target_ratio=5 privacy.mode=dynamic": "overrides",
    "python -m fl_vmix --multirun privacy=none,visualmixer seed=0,1": "overrides",
    "python -m fl_vmix preset=paper_cifar10": "overrides",
    "python -m fl_vmix device=cuda engine.num_gpus_per_client=0.5": "overrides",
    "python -m fl_vmix resume=outputs/2026-12-01/10-22-51 num_rounds=150": "resume: tests/test_resume.py",
    "python -m fl_vmix resume=outputs/2026-12-01/10-22-51": "resume: tests/test_resume.py",
    "fl-vmix partition=dirichlet partition.alpha=0.3": "overrides",
    "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1": "the environment of tests/test_flwr_run.py",
    "FL_VMIX_DATA=$PWD/../shared/data flwr run . --stream": "flwr run: tests/test_flwr_run.py",
    "flwr run . --stream --run-config \"overrides='num_rounds=2 dataset.data_fraction=0.05 output_dir=/tmp/run'\"": (
        "flwr run: tests/test_flwr_run.py runs it with 1 round"
    ),
    'flwr run . --stream --federation-config "num-supernodes=5 client-resources-num-cpus=1"': (
        "flwr run: tests/test_flwr_run.py"
    ),
    "python -m fl_vmix.evaluation.attack_grade --experiment NAME --list": "run",
    "python -m fl_vmix.evaluation.attack_grade --experiment cifar10_frontier --learned-budget-s 120 "
    "--classifier-budget-s 300 --recogniser-budget-s 90 --candidates 16 --candidate-rounds 3": "run",
    "python -m fl_vmix.evaluation.attack_grade --experiment retinamnist --victims 520 --learned-budget-s 180 "
    "--classifier-budget-s 120 --recogniser-budget-s 120 --candidates 16 --candidate-rounds 5": "run",
}


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks before its deployment sections: continuation lines
    joined, comments dropped."""
    text = README.read_text().split(DEPLOYMENT)[0]
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def readme_python(marker: str) -> str:
    match = re.search(rf"<!-- readme-test: {marker} -->\n```python\n(.*?)^```", README.read_text(), re.M | re.S)
    assert match, f"README has no ```python block after <!-- readme-test: {marker} -->"
    return match.group(1)


def overrides_of(command: str) -> list[str]:
    return [a for a in command.split() if "=" in a and not a.startswith("-")]


def test_every_readme_command_has_a_plan():
    commands = readme_commands()
    assert len(commands) >= 20, "the README's bash blocks were not found"
    assert set(commands) == set(PLAN), (
        f"README commands without a plan: {sorted(set(commands) - set(PLAN))}; "
        f"planned commands no longer in the README: {sorted(set(PLAN) - set(commands))}"
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme_cache")  # the data is decoded once for all the commands


@pytest.mark.parametrize("command", [c for c, how in PLAN.items() if how == "overrides"])
def test_readme_run_commands_pass_the_checks_a_run_makes_first(command, cache_dir):
    """Each sweep value separately; the data check on the real data (FL_VMIX_DATA as the README says)."""
    root = require_shared("")
    overrides = overrides_of(command)
    sweeps = [o for o in overrides if "," in o.split("=", 1)[1]]
    fixed = [o for o in overrides if o not in sweeps]
    choices = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in sweeps]
    combos = [fixed + [c[i] for c in choices] for i in range(max((len(c) for c in choices), default=1))]
    for combo in combos:
        experiment = compose([*combo, f"dataset.root={root}", f"dataset.cache_dir={cache_dir}"])
        if experiment.device.startswith("cuda") and not _cuda():
            check_settings(experiment)  # the device itself is checked where the GPU is (test_gpu*)
            continue
        check_experiment(experiment, check_data=False)
        check_clients_fit(experiment)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FL_VMIX_DATA": str(require_shared(""))}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [c for c, how in PLAN.items() if how == "run"])
def test_readme_attack_commands_list_and_regrade_nothing_committed(command):
    """The grading commands as written, with ``--list`` (grading is hours): the committed budgets they name
    match the committed grades, so none of those would be regraded."""
    args = command.replace("NAME", "cifar10_frontier").split()
    if "--list" not in args:
        args.append("--list")
    result = _run([sys.executable, *args[1:]])
    assert result.returncode == 0, result.stderr
    assert ": graded (" in result.stderr or "to regrade" in result.stderr, result.stderr
    if "NAME" not in command:
        assert "to regrade" not in result.stderr and ": graded (" in result.stderr, result.stderr


def test_the_library_snippet_runs_and_reaches_its_target():
    require_shared("cifar10-jpg.tar.xz")
    result = _run([sys.executable, "-c", readme_python("library")])
    assert result.returncode == 0, result.stderr
    clear, achieved, unreached = re.findall(r"tensor\(([\d.]+)\)|(\d+)$", result.stdout.strip())
    clear_vfe, achieved_vfe = float(clear[0]), float(achieved[0])
    assert int(unreached[1]) == 0 and achieved_vfe >= 3 * clear_vfe, result.stdout
    assert f"about {clear_vfe:.2f}" in README.read_text(), "the README states the clear VFE it prints"
