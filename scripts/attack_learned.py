"""Learned de-obfuscation attack (and optionally the recognition attacks) on one privacy setting.

    python scripts/attack_learned.py --method visualmixer --root ../shared/data \
        --out experiments/results/attacks_learned_dev/visualmixer_default.json

    python scripts/attack_learned.py --method visualmixer --param region_size=16 --param 'block_sizes=[4,2]' \
        --param permute_channels=true --public 20000 --victims 500 --epochs 5 --time-budget 1800 \
        --classifier-epochs 15 --recogniser-epochs 15 --out experiments/results/<experiment>/<setting>.json

The attacker obfuscates ``--public`` random images of the training split under keys of its own,
trains the reconstruction network (``fl_vmix.evaluation.attacks.learned``) within ``--time-budget``
seconds, and reconstructs ``--victims`` random test images obfuscated under a victim key it never
sees. ``--classifier-epochs N`` also trains a classifier on the clear public images and scores it on
the clear, obfuscated and reconstructed victims; ``--recogniser-epochs N`` trains a classifier on the
obfuscated public images (attacker keys) and scores it on the obfuscated victims. The JSON holds the
exact command, the settings, the training history and every score.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_vmix.data import load_dataset
from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    keyed_method_factory,
    score_learned_attack,
    train_deobfuscator,
)
from fl_vmix.evaluation.attacks.obfuscated_recognition import (
    ClassifierConfig,
    obfuscated_recognition_attack,
    train_classifier,
)

REGION_PARAMS = ("region_size", "cell_size", "b")  # the public grid of each method, if it has one


def parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes key=value (e.g. region_size=8), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="visualmixer", help="registered image-level privacy method")
    p.add_argument(
        "--param", type=parse_param, action="append", default=[], help="method parameter key=value (JSON value)"
    )
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--root", default=None, help="data root (default: $FL_VMIX_DATA, then ~/.cache/fl_vmix/data)")
    p.add_argument("--public", type=int, default=20000, help="public (attacker) images from the training split")
    p.add_argument("--victims", type=int, default=500, help="victim images from the test split")
    p.add_argument(
        "--region-size", type=int, default=None, help="feature grid (default: the method's region/cell size, else 8)"
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=1800.0, help="seconds for training the reconstruction network")
    p.add_argument("--head", default="auto", choices=["auto", "direct", "quantile"])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--classifier-epochs", type=int, default=0, help="train a clear classifier (0: skip)")
    p.add_argument("--recogniser-epochs", type=int, default=0, help="train a classifier on obfuscated data (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: print only)")
    return p.parse_args(argv)


def _pick(n_total: int, n: int, seed: int, what: str) -> np.ndarray:
    digest = hashlib.sha256(f"attack_learned-{what}-{seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values.numpy()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("fl_vmix.privacy").setLevel(logging.ERROR)  # unreached VFE targets: reported by the mixer
    if args.threads:
        torch.set_num_threads(args.threads)
    params = dict(args.param)
    region = args.region_size or next((int(params[k]) for k in REGION_PARAMS if k in params), None)
    factory = keyed_method_factory(args.method, **params)
    if region is None:
        probe = factory(b"\0" * 32)
        region = next((int(getattr(probe, k)) for k in ("region_size", "cell_size", "b") if hasattr(probe, k)), None)
        region = region or int(getattr(getattr(probe, "mixer", None), "region_size", 8))

    train = load_dataset(args.dataset, args.root, "train")
    test = load_dataset(args.dataset, args.root, "test")
    pub = _pick(len(train), args.public, args.seed, "public")
    vic = _pick(len(test), args.victims, args.seed, "victims")
    public_images, public_labels = np.asarray(train.images[pub]), np.asarray(train.labels[pub])
    clear = torch.from_numpy(np.asarray(test.images[vic])).float() / 255
    labels = torch.from_numpy(np.asarray(test.labels[vic]))
    victim_key = hashlib.sha256(f"victim-{args.seed}".encode()).digest()  # never given to the attacker
    obfuscated = factory(victim_key)(clear, torch.from_numpy(test.ids[vic]), 0)

    config = LearnedAttackConfig(
        region_size=region,
        widths=tuple(args.widths),
        head=args.head,
        epochs=args.epochs,
        time_budget_s=args.time_budget,
        seed=args.seed,
        device=args.device,
    )
    model, history = train_deobfuscator(public_images, factory, config, public_ids=torch.from_numpy(train.ids[pub]))
    start = time.perf_counter()
    reconstructed = model.reconstruct(obfuscated)
    reconstruct_s = time.perf_counter() - start

    classifier, classifier_info = None, None
    if args.classifier_epochs:
        cconf = ClassifierConfig(epochs=args.classifier_epochs, seed=args.seed, device=args.device)
        classifier, classifier_info = train_classifier(public_images, public_labels, train.num_classes, None, cconf)
    result = score_learned_attack(reconstructed, clear, obfuscated, region, classifier=classifier, labels=labels)

    recogniser = None
    if args.recogniser_epochs:
        rconf = ClassifierConfig(epochs=args.recogniser_epochs, seed=args.seed, device=args.device)
        rec, _ = obfuscated_recognition_attack(
            public_images,
            public_labels,
            obfuscated,
            labels,
            factory,
            train.num_classes,
            rconf,
            victim_clear=clear,
            clear_classifier=classifier,
        )
        recogniser = rec.summary()

    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
        "dataset": args.dataset,
        "method": args.method,
        "params": params,
        "feature_region_size": region,
        "public_images": len(pub),
        "victim_images": len(vic),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in history.__dict__.items()},
        "reconstruct_seconds": reconstruct_s,
        "learned_attack": result.summary(),
        "clear_classifier": classifier_info,
        "obfuscated_recognition": recogniser,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
