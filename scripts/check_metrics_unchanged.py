"""Check that a change leaves a run's results unchanged: the same small run at a git ref and in this tree.

    python scripts/check_metrics_unchanged.py --before <git ref> [--data ../shared/data] [--workdir DIR]
        [hydra overrides ...]   (default: num_rounds=2 num_clients=3 dataset.data_fraction=0.05)

Both runs use the same data, cache, Flower home and client keys (fixed 32-byte keys written into one
``FL_VMIX_KEY_DIR``; a tree that knows ``engine.simulation_keys`` is told to read them with
``engine.simulation_keys=random``), so they must agree exactly: ``metrics.csv`` (all but the round time),
``clients.csv`` (all but the timing columns) and the final weights in ``model.pt``. The ref is
exported with ``git archive`` and run from that copy. Prints the comparison; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = ["num_rounds=2", "num_clients=3", "dataset.data_fraction=0.05"]
TIMING = {"round_time_s", "obfuscation_s", "train_time_s"}


def write_keys(folder: Path, count: int) -> None:
    """Fixed, distinct 32-byte client keys, so both runs protect each client's images identically."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"node-{i}.key").write_bytes(hashlib.sha256(f"fl_vmix metrics check node {i}".encode()).digest())


def key_file_overrides(source: Path) -> list[str]:
    """Versions with derived simulation keys read the key files only when asked to; versions that draw DP noise
    from OS entropy reproduce it only when asked to."""
    engine = source / "fl_vmix" / "conf" / "engine" / "simulation.yaml"
    overrides = ["engine.simulation_keys=random"] if "simulation_keys" in engine.read_text() else []
    if "reproducible_noise" in (source / "fl_vmix" / "conf" / "config.yaml").read_text():
        overrides.append("reproducible_noise=true")
    return overrides


def run(source: Path, out: Path, overrides: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "fl_vmix", *overrides, *key_file_overrides(source), f"output_dir={out}"]
    print(f"running in {source}: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(
        command,
        cwd=source,
        env={**env, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0 or not (out / "metrics.csv").exists():
        raise SystemExit(f"run in {source} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def same_weights(before: Path, after: Path) -> bool:
    import torch

    a = torch.load(before, map_location="cpu", weights_only=True)
    b = torch.load(after, map_location="cpu", weights_only=True)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare against (e.g. main)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", default=DEFAULT_OVERRIDES)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="fl_vmix_same_metrics_"))).resolve()
    source = work / "before_src"
    source.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    num_clients = next((int(o.split("=", 1)[1]) for o in args.overrides if o.startswith("num_clients=")), 5)
    write_keys(work / "keys", num_clients)
    env = {
        **os.environ,
        "FL_VMIX_DATA": str(args.data.resolve()),
        "FL_VMIX_CACHE": str(work / "cache"),
        "FL_VMIX_KEY_DIR": str(work / "keys"),
        "FLWR_HOME": str(work / "flwr_home"),
    }
    run(source, work / "before", args.overrides, env)
    run(REPO, work / "after", args.overrides, env)
    checks = {
        "metrics.csv (without round_time_s)": rows(work / "before" / "metrics.csv")
        == rows(work / "after" / "metrics.csv"),
        "clients.csv (without timings)": rows(work / "before" / "clients.csv") == rows(work / "after" / "clients.csv"),
        "model.pt (final weights)": same_weights(work / "before" / "model.pt", work / "after" / "model.pt"),
    }
    for name, ok in checks.items():
        print(f"{'same' if ok else 'DIFFERENT':>9}  {name}")
    print(f"runs in {work}/before and {work}/after")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
