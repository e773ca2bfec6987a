"""Before/after grid: real images next to their VisualMixer obfuscations at several target VFEs.

    python scripts/vmix_grid.py --root ../shared/data     # writes outputs/vmix_grid.png
    python scripts/vmix_grid.py --root ../shared/data --out docs/figures/vmix_grid.png --overwrite-tracked

One row per image (one per class by default); columns: the clear image, then one obfuscation per
target ratio, each titled with its corrected VFE (window = region size) and the ratio reached.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from tracked_outputs import FLAG, check_output  # scripts/, next to this file

from fl_vmix.data import load_dataset
from fl_vmix.privacy import VisualMixer, vfe


def one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    return np.array(firsts[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--root", default=None, help="data root (default: $FL_VMIX_DATA, then ~/.cache/fl_vmix/data)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/vmix_grid.png"), help="a .png (default: outputs/)")
    parser.add_argument(FLAG, action="store_true", help="allow --out to replace a figure git tracks")
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[1.5, 3.0, 5.0],
        help="target VFE ratios (multiples of the clear VFE)",
    )
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--region-size", type=int, default=8)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--key-hex", help="a 16-64 byte key in hex (default: a fresh random key each run)")
    args = parser.parse_args()
    check_output(args.out, args.overwrite_tracked, ".png")

    key = bytes.fromhex(args.key_hex) if args.key_hex else secrets.token_bytes(32)
    data = load_dataset(args.dataset, args.root, "test", cache_dir=args.cache_dir)
    index = one_per_class(np.asarray(data.labels), args.count)
    images = torch.from_numpy(np.asarray(data.images[index])).float() / 255
    ids = torch.from_numpy(index.astype(np.int64))
    columns = [("clear", images, vfe(images, args.region_size, "corrected"))]
    for ratio in args.ratios:
        mixer = VisualMixer(key, region_size=args.region_size, block_sizes=tuple(args.block_sizes), target_ratio=ratio)
        result = mixer.mix(images, ids)
        columns.append((f"target {ratio:g}x", result.images, result.report.achieved_vfe))

    fig, axes = plt.subplots(len(index), len(columns), figsize=(1.9 * len(columns), 1.9 * len(index)), squeeze=False)
    clear_vfe = columns[0][2]
    for row in range(len(index)):
        for col, (title, batch, values) in enumerate(columns):
            ax = axes[row][col]
            picture = batch[row].permute(1, 2, 0).numpy()
            ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", interpolation="nearest")
            label = f"VFE {values[row]:.2f}" + ("" if col == 0 else f" ({values[row] / clear_vfe[row]:.1f}x)")
            ax.set_title((f"{title}\n" if row == 0 else "") + label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(data.classes[int(data.labels[index[row]])], fontsize=8)
    fig.suptitle(
        f"VisualMixer on {args.dataset} (region {args.region_size}, blocks {args.block_sizes}, corrected VFE)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
