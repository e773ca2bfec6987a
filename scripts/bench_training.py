"""A federated client's local training speed next to its floor, for every registered model, fp32 and bf16.

    python scripts/bench_training.py [--models cnn resnet18] [--amp off bf16] [--batches 8] [--repeats 3]
                                     [--threads 2] [--record RELEASE]

For each model (at 32 px, CIFAR-10's size and the default experiment's; batch size and optimiser from the
default experiment) and each precision, two measures in the same run, interleaved so they see the same
machine load (``bench_vmix.timed``):

- ``client``: the client's own training path, :func:`fl_vmix.training.loops.train_epochs` (one epoch over
  ``batches`` batches of images in [0, 1]: seeded batch order, normalisation, autocast, loss bookkeeping);
- ``floor``: the same model, batch size and optimiser stepping on pre-made, already normalised batches
  (zero_grad, forward and loss under the same autocast, backward, step) and nothing else.

Prints img/s of both and ``client_over_floor`` (seconds per image, client / floor; target <= 1.25), and as
its last line one JSON list of the rows. ``--record RELEASE`` appends each row, with the hardware, commit
and load average, to ``experiments/results/bench_training/results.csv``. bf16 is measured as asked
whatever the hardware; ``native_bf16`` says whether this machine runs it natively (what ``amp=auto`` uses).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_vmix import hardware, record, timed
from rich.console import Console
from rich.table import Table

from fl_vmix.experiment import compose
from fl_vmix.factory import build_optimizer
from fl_vmix.models import MODELS, build_model
from fl_vmix.training.device import Compute, native_bf16
from fl_vmix.training.loops import normalise, train_epochs

RECORD = Path(__file__).resolve().parents[1] / "experiments" / "results" / "bench_training" / "results.csv"
SIZE, CLASSES = 32, 10


def measure(name: str, amp: str, batch: int, batches: int, repeats: int) -> dict[str, float | str]:
    experiment = compose([f"model={name}"])
    compute = Compute.of("cpu", amp)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch * batches, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(0, CLASSES, (batch * batches,), generator=g)
    client_model, floor_model = build_model(name, CLASSES, seed=0), build_model(name, CLASSES, seed=0)
    client_opt = build_optimizer(experiment, client_model.parameters())
    floor_opt = build_optimizer(experiment, floor_model.parameters())
    premade = [(normalise(images[i : i + batch]), labels[i : i + batch]) for i in range(0, len(labels), batch)]

    def floor(_: int) -> None:
        floor_model.train()
        for inputs, targets in premade:
            floor_opt.zero_grad(set_to_none=True)
            with compute.autocast():
                loss = F.cross_entropy(floor_model(inputs), targets)
            loss.backward()
            floor_opt.step()

    def client(i: int) -> None:
        train_epochs(client_model, images, labels, client_opt, epochs=1, batch_size=batch, seed=i, compute=compute)

    t = timed({"floor": floor, "client": client}, repeats, torch.device("cpu"))
    n = len(labels)
    return {
        "model": name,
        "amp": amp,
        "batch_size": batch,
        "images": n,
        "floor_img_per_s": n / t["floor"],
        "client_img_per_s": n / t["client"],
        "client_over_floor": t["client"] / t["floor"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16"])
    parser.add_argument("--batches", type=int, default=8, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", metavar="RELEASE", help="append the rows to experiments/results/bench_training")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    batch = compose([]).batch_size
    cpu = torch.device("cpu")
    common: dict[str, float | str] = {
        "device": "cpu",
        "hardware": hardware(cpu),
        "native_bf16": str(native_bf16(cpu)),
        "threads": torch.get_num_threads(),
    }
    rows = [
        {**common, **measure(name, amp, batch, args.batches, args.repeats)} for name in args.models for amp in args.amp
    ]
    table = Table(title=f"Client training vs floor on {common['hardware']} ({common['threads']} threads)")
    for column in ("model", "amp", "floor img/s", "client img/s", "client / floor"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["model"]),
            str(row["amp"]),
            f"{row['floor_img_per_s']:,.1f}",
            f"{row['client_img_per_s']:,.1f}",
            f"{row['client_over_floor']:.3f}",
        )
    Console().print(table)
    print(f"load average at start {load_at_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(json.dumps([{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]))
    if args.record:
        for row in rows:
            record(args.record, row, load_at_start, path=RECORD)


if __name__ == "__main__":
    main()
