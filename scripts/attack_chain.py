"""Chained A1 attack on one privacy setting: gradient inversion of client updates, then learned de-obfuscation.

    python scripts/attack_learned.py --method visualmixer --save-model outputs/deobf_vm.pt ...   # stage 2 net
    python scripts/attack_chain.py --deobfuscator outputs/deobf_vm.pt --method visualmixer --root ../shared/data \
        --images 32 --iterations 4800 --out experiments/results/<experiment>/chain_<setting>.json

The victims are ``--images`` random test images (the split the attacker's public training images do not
come from), obfuscated under a victim key the attacker never sees. Each image is one client update (one
SGD step of the client's batch of one at ``--local-lr``) of the initial global model (``--model``,
initialised from ``--model-seed``, inputs normalised as the clients do: ``(x - 0.5) / 0.5``). The server
inverts every update (``fl_vmix.evaluation.attacks.chain``; Geiping et al.'s schedule, ``--iterations``:
4,800 is their CIFAR-10 setting) and runs the saved de-obfuscation network on the inverted images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fl_vmix.data import load_dataset
from fl_vmix.evaluation.attack_grade.grade import commit
from fl_vmix.evaluation.attacks.chain import GEIPING_ITERATIONS_CIFAR, ChainConfig, chained_attack
from fl_vmix.evaluation.attacks.learned import LearnedDeobfuscator, keyed_method_factory
from fl_vmix.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from attack_learned import parse_param  # the same key=value syntax

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deobfuscator", type=Path, required=True, help="network saved by attack_learned.py --save-model")
    p.add_argument("--method", default="visualmixer")
    p.add_argument("--param", type=parse_param, action="append", default=[], help="method parameter key=value")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--root", default=None)
    p.add_argument("--images", type=int, default=32)
    p.add_argument(
        "--iterations", type=int, default=1000, help=f"inversion iterations ({GEIPING_ITERATIONS_CIFAR}: published)"
    )
    p.add_argument("--tv-weight", type=float, default=1e-2)
    p.add_argument("--local-lr", type=float, default=0.01)
    p.add_argument("--model", default="cnn")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("fl_vmix.privacy").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = dict(args.param)
    factory = keyed_method_factory(args.method, **params)
    deobfuscator = LearnedDeobfuscator.load(args.deobfuscator)
    test = load_dataset(args.dataset, args.root, "test")
    digest = hashlib.sha256(f"attack_chain-victims-{args.seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    pick = torch.randperm(len(test), generator=g)[: args.images].sort().values.numpy()
    clear = torch.from_numpy(np.asarray(test.images[pick])).float() / 255
    labels = torch.from_numpy(np.asarray(test.labels[pick]))
    obfuscated = factory(hashlib.sha256(f"victim-{args.seed}".encode()).digest())(
        clear, torch.from_numpy(test.ids[pick]), 0
    )
    model = build_model(args.model, test.num_classes, clear.shape[1], clear.shape[-1], seed=args.model_seed).train()
    config = ChainConfig(iterations=args.iterations, tv_weight=args.tv_weight, local_lr=args.local_lr, seed=args.seed)
    start, cpu = time.perf_counter(), time.process_time()
    result = chained_attack(
        model,
        clear,
        obfuscated,
        labels,
        deobfuscator,
        test.num_classes,
        config,
        input_transform=lambda x: (x - 0.5) / 0.5,
    )
    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "commit": commit(),
        "method": args.method,
        "params": params,
        "model": args.model,
        "deobfuscator": str(args.deobfuscator),
        "config": {k: v for k, v in config.__dict__.items()},
        "published_iterations_cifar10": GEIPING_ITERATIONS_CIFAR,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "chain": result.summary(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
