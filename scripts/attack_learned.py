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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_vmix.data import load_dataset
from fl_vmix.evaluation.attack_grade.grade import commit
from fl_vmix.evaluation.attacks.candidate_search import candidate_search
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
from fl_vmix.evaluation.attacks.regions import thumbnail

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
    p.add_argument(
        "--candidates", type=int, default=0, help="also run the candidate search with N candidates (0: skip)"
    )
    p.add_argument("--no-learned", action="store_true", help="skip the learned attack (run only the others asked for)")
    p.add_argument("--figure", type=Path, default=None, help="PNG of 8 victims: clear, obfuscated, thumbnail, learned")
    p.add_argument(
        "--save-model", type=Path, default=None, help="save the trained network (for scripts/attack_chain.py)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON to write, after every stage (default: print only)")
    return p.parse_args(argv)


def _pick(n_total: int, n: int, seed: int, what: str) -> np.ndarray:
    digest = hashlib.sha256(f"attack_learned-{what}-{seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values.numpy()


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
    report: dict[str, Any] = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "note": "run from the repository root with fl_vmix importable (pip install -e . or PYTHONPATH=.)",
        "commit": commit(),
        "dataset": args.dataset,
        "method": args.method,
        "params": params,
        "feature_region_size": region,
        "public_images": len(pub),
        "victim_images": len(vic),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": _plain(config.__dict__),
    }
    reconstructed = None
    if not args.no_learned:
        cpu_start = time.process_time()
        model, history = train_deobfuscator(public_images, factory, config, public_ids=torch.from_numpy(train.ids[pub]))
        if args.save_model:
            report["model_file"] = str(model.save(args.save_model))
        report["training"] = _plain(history.__dict__)
        report["training_cpu_seconds"] = time.process_time() - cpu_start  # all threads: shows sharing with other jobs
        start = time.perf_counter()
        reconstructed = model.reconstruct(obfuscated)
        report["reconstruct_seconds"] = time.perf_counter() - start
        report["learned_attack"] = score_learned_attack(reconstructed, clear, obfuscated, region).summary()
        _write(report, args.out)  # the expensive part is safe before the optional classifiers run

    mixer = getattr(factory(b"\0" * 32), "mixer", None)  # block shuffles expose their public grid
    if args.candidates and mixer is not None:
        start = time.perf_counter()
        sizes = tuple(int(b) for b in mixer.block_sizes)
        searched = candidate_search(obfuscated, mixer.region_size, sizes, candidates=args.candidates)
        report["candidate_search"] = {
            **searched.score(clear).summary(), "block_sizes": list(sizes), "candidates": args.candidates,
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        _write(report, args.out)
    if args.figure and reconstructed is not None:
        _figure(
            args.figure, clear[:8], obfuscated[:8], thumbnail(obfuscated[:8], region).clamp(0, 1), reconstructed[:8]
        )

    classifier = None
    if args.classifier_epochs:
        cconf = ClassifierConfig(epochs=args.classifier_epochs, seed=args.seed, device=args.device)
        classifier, report["clear_classifier"] = train_classifier(
            public_images, public_labels, train.num_classes, None, cconf
        )
        if reconstructed is not None:
            scored = score_learned_attack(
                reconstructed, clear, obfuscated, region, classifier=classifier, labels=labels
            )
            report["learned_attack"] = scored.summary()
        _write(report, args.out)
    if args.recogniser_epochs:
        rconf = ClassifierConfig(epochs=args.recogniser_epochs, seed=args.seed, device=args.device)
        rec, _ = obfuscated_recognition_attack(
            public_images, public_labels, obfuscated, labels, factory, train.num_classes, rconf,
            victim_clear=clear, clear_classifier=classifier,
        )  # fmt: skip
        report["obfuscated_recognition"] = rec.summary()
        _write(report, args.out)
    print(json.dumps(report, indent=2))
    return report


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


def _write(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def _figure(path: Path, *rows: torch.Tensor) -> None:
    """Columns of victims; rows clear, obfuscated, bilinear region-mean thumbnail, learned reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["clear", "obfuscated", "thumbnail", "learned"]
    fig, axes = plt.subplots(
        len(rows), rows[0].shape[0], figsize=(1.3 * rows[0].shape[0], 1.4 * len(rows)), squeeze=False
    )
    for r, (title, batch) in enumerate(zip(titles, rows)):
        for c in range(batch.shape[0]):
            picture = batch[c].permute(1, 2, 0).numpy()
            axes[r][c].imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
