"""The suite's outputs beside the CSVs: the image grid (``attacks_grid.png``) and the report (``attacks.md``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fl_vmix.evaluation.attack_suite.settings import (
    INVERSION_SUCCESS_SSIM,
    JIGSAW_SUCCESS_GAIN,
    JIGSAW_SUCCESS_IN_PLACE,
    JIGSAW_SUCCESS_SSIM,
    RECOGNITION_ALPHA,
    SubjectResult,
    SuiteSettings,
)
from fl_vmix.evaluation.attack_suite.subjects import Subject
from fl_vmix.tables import markdown_table


def write_grid(path: Path, results: Sequence[SubjectResult], per_row: int) -> None:
    """Per setting (row): for ``per_row`` client images, clear / obfuscated / inverted / jigsaw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("clear", "obfuscated", "inverted (b=1)", "jigsaw")
    per_row = min(per_row, *(r.clear.shape[0] for r in results if r.clear is not None))
    cols = per_row * len(kinds)
    fig, axes = plt.subplots(len(results), cols, figsize=(1.3 * cols, 1.45 * len(results)), squeeze=False)
    for r, res in enumerate(results):
        panels = (res.clear, res.obfuscated, res.inverted, res.reassembled)
        for i in range(per_row):
            for k, (kind, images) in enumerate(zip(kinds, panels)):
                ax = axes[r][i * len(kinds) + k]
                ax.set_xticks([])
                ax.set_yticks([])
                available = images is not None and i < images.shape[0]
                assert res.clear is not None  # every subject's clear images are kept
                img = (
                    (images if images is not None and available else torch.ones_like(res.clear))[i]
                    .detach()
                    .clamp(0, 1)
                    .permute(1, 2, 0)
                    .numpy()
                )
                ax.imshow(
                    img[..., 0] if img.shape[-1] == 1 else img,
                    cmap="gray" if img.shape[-1] == 1 else None,
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                if not available:  # same-sized blank panel, so the grid stays aligned
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                if r == 0:
                    ax.set_title(kind, fontsize=7)
        label = "\n".join(textwrap.wrap(res.subject.label, 24)) or res.subject.label  # all of it, over several lines
        axes[r][0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_markdown(
    path: Path,
    experiment: str,
    subjects: Sequence[Subject],
    rows: Sequence[dict[str, Any]],
    sweep_rows: Sequence[dict[str, Any]],
    settings: SuiteSettings,
    clear_note: str,
    sweep_source: str,
    seconds: float,
) -> None:
    """Tables and findings, written to be pasted into the experiment report."""
    inv = [r for r in rows if r["attack"] == "inversion"]
    rec = [r for r in rows if r["attack"] == "recognition" and r["applicable"]]
    jig = [r for r in rows if r["attack"] == "jigsaw" and r["applicable"]]
    na = sorted({r["label"] for r in rows if r["attack"] == "jigsaw" and not r["applicable"]})
    lines = [
        f"# Privacy attacks: {experiment}",
        "",
        (
            f"Scale: {len(subjects)} privacy settings; gradient inversion on {settings.n_inversion} images of client 0 "
            f"per setting ({settings.inversion_iterations} Adam iterations, TV weight {settings.tv_weight}, labels "
            "inferred, "
            f"batch sizes {list(settings.inversion_batch_sizes)}, local SGD steps {list(settings.local_steps)}, "
            f"lr {settings.local_lr}); jigsaw on {settings.images} images; recognition on up to "
            f"{settings.recognition_images} "
            f"test images; seed {settings.seed}; {seconds / 60:.1f} min on {settings.device}. "
            "Threat model and attacks: docs/threat_model.md."
        ),
        "",
        "Settings:",
        "",
    ]
    lines += [
        f"- `{s.label}`: `{s.method}` {s.params_text or '(no parameters)'}"
        + (f" (runs: {', '.join(str(p) for p in s.runs)})" if s.runs else " (no run: initial model only)")
        for s in subjects
    ]
    lines += ["", "## Gradient inversion (server, A1)", ""]
    lines += markdown_table(
        inv,
        [
            ("setting", "label"),
            ("model", "model"),
            ("batch", "batch_size"),
            ("steps", "local_steps"),
            ("SSIM clear", "ssim_to_clear"),
            ("PSNR clear", "psnr_to_clear"),
            ("SSIM obf.", "ssim_to_obfuscated"),
            ("PSNR obf.", "psnr_to_obfuscated"),
            ("obf. vs clear SSIM", "obfuscated_ssim_to_clear"),
            ("labels ok", "labels_correct"),
            ("success", "success"),
        ],
    )
    lines += [
        "",
        (
            f"Success: mean SSIM to the clear image >= {INVERSION_SUCCESS_SSIM}. 'obf. vs clear SSIM' is the SSIM of "
            "the "
            "images the client trained on to the clear ones: the most a perfect inversion can show of the clear image."
        ),
        "",
    ]
    lines += ["## Recognition by a clear-data model (A2)", ""]
    if rec:
        lines += markdown_table(
            rec,
            [
                ("setting", "label"),
                ("accuracy", "accuracy"),
                ("chance", "chance"),
                ("majority", "majority_rate"),
                ("p", "p_value"),
                ("SSIM to clear", "ssim_to_clear"),
                ("success", "success"),
            ],
        )
        lines += [
            "",
            f"{rec[0]['note']}. Success: accuracy above max(chance, majority) with one-sided binomial p < "
            f"{RECOGNITION_ALPHA}.",
            "",
        ]
    else:
        lines += [f"Recognition {clear_note}.", ""]
    lines += ["## Jigsaw reassembly (A2)", ""]
    if jig:
        lines += markdown_table(
            jig,
            [
                ("setting", "label"),
                ("blocks in place", "blocks_in_place"),
                ("neighbours ok", "neighbours_correct"),
                ("SSIM obf. vs clear", "obfuscated_ssim_to_clear"),
                ("SSIM reassembled vs clear", "ssim_to_clear"),
                ("PSNR", "psnr_to_clear"),
                ("success", "success"),
                ("note", "note"),
            ],
        )
        lines += [
            "",
            (
                f"Success: >= {JIGSAW_SUCCESS_IN_PLACE:.0%} of shuffled blocks back in place, or reassembly SSIM to "
                "clear >= "
                f"{JIGSAW_SUCCESS_SSIM} and >= {JIGSAW_SUCCESS_GAIN} above the obfuscated image's."
            ),
        ]
    lines += [f"Not applicable (no block shuffle): {', '.join(na)}." if na else "", ""]
    if sweep_rows:
        lines += [
            f"## Which VisualMixer settings stop the jigsaw ({len(sweep_rows)} settings, {sweep_rows[0]['n']} images "
            f"of the {sweep_source})",
            "",
        ]
        lines += markdown_table(
            sweep_rows,
            [
                ("region", "region_size"),
                ("blocks", "block_sizes"),
                ("target ratio", "target_ratio"),
                ("perm. channels", "permute_channels"),
                ("mean block", "mean_block_size"),
                ("in place", "blocks_in_place"),
                ("SSIM obf.", "obfuscated_ssim_to_clear"),
                ("SSIM reassembled", "ssim_to_clear"),
                ("gain", "ssim_gain"),
                ("SSIM region means", "region_mean_ssim_to_clear"),
                ("success", "success"),
                ("verdict", "verdict"),
            ],
        )
        lines.append("")
    lines += ["## Findings", ""] + findings(rows, sweep_rows) + [""]
    path.write_text("\n".join(lines))


def findings(rows: Sequence[dict[str, Any]], sweep_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain statements drawn from the numbers (no judgement beyond the success rules)."""
    out = []
    check = [
        r
        for r in rows
        if r["attack"] == "inversion" and r["method"] == "none" and r["batch_size"] == 1 and r["model"] == "initial"
    ]
    if check:
        c = check[0]
        verdict = (
            "recognisable, so the attack is strong enough for low scores elsewhere to mean something"
            if c["success"]
            else (
                "NOT recognisable at this scale: the attack is too weak here, and low inversion scores of other "
                "settings prove nothing"
            )
        )
        out.append(
            "- Attack check: on an unprotected client (batch 1, initial model) inversion reaches SSIM "
            f"{c['ssim_to_clear']:.3f} "
            f"(PSNR {c['psnr_to_clear']:.1f} dB) to the clear image: {verdict}."
        )
        trained = [
            r
            for r in rows
            if r["attack"] == "inversion" and r["method"] == "none" and r["batch_size"] == 1 and r["model"] == "trained"
        ]
        if trained:
            out.append(
                f"- From the trained global model the same attack reaches only SSIM {trained[0]['ssim_to_clear']:.3f} "
                "on the "
                "unprotected client at this scale: rows with model=trained understate what a longer attack recovers."
            )
    else:
        out.append(
            "- Attack check missing: no unprotected (`none`) setting was attacked; add a `none` run or `--method none`."
        )
    for r in rows:
        if r["attack"] == "inversion" and r["model"] == "initial" and r["batch_size"] == 1 and r["method"] != "none":
            gap = r["ssim_to_obfuscated"] - r["ssim_to_clear"]
            text = (
                f"- `{r['label']}` inversion (batch 1): SSIM {r['ssim_to_clear']:.3f} to clear, "
                f"{r['ssim_to_obfuscated']:.3f} to the image trained on"
            )
            if gap > 0.1:
                text += "; the update leaks the protected image, which is less like the clear one"
            if r["success"]:
                text += "; SUCCESS: recognisable"
            if r["method"] == "central_dp":
                text += " (the server sees each clipped update before adding noise; clipping only rescales it)"
            out.append(text + ".")
    rec = [r for r in rows if r["attack"] == "recognition" and r["applicable"]]
    if rec:
        clear = next((r["accuracy"] for r in rec if r["method"] == "none"), float("nan"))
        parts = [
            f"`{r['label']}` {r['accuracy']:.3f}" + ("" if r["success"] else " (not above chance)")
            for r in rec
            if r["method"] != "none"
        ]
        out.append(
            f"- Recognition: the clear-data model scores {clear:.3f} on clear test images (chance "
            f"{rec[0]['chance']:.3f}, "
            f"majority {rec[0]['majority_rate']:.3f}) and on protected ones: {', '.join(parts)}."
        )
    for r in rows:
        if r["attack"] == "jigsaw" and r["applicable"]:
            verdict = r["note"].split(";")[0]
            out.append(
                f"- `{r['label']}` jigsaw: {r['blocks_in_place']:.0%} of blocks back in place, SSIM "
                f"{r['obfuscated_ssim_to_clear']:.3f} -> "
                f"{r['ssim_to_clear']:.3f}: {verdict} ({r['note'].split('; ', 1)[-1]})."
            )
    if sweep_rows:

        def describe(s: dict[str, Any]) -> str:
            ratio = f" ratio {s['target_ratio']}" if s["target_ratio"] != "" else ""
            return f"{s['region_size']}/{s['block_sizes']}{ratio}{' +channels' if s['permute_channels'] else ''}"

        meanings = {
            "leaks": "reassembles (success)",
            "partial": f"partly restores (SSIM gain >= {JIGSAW_SUCCESS_GAIN}, no success)",
            "holds": f"gains less than {JIGSAW_SUCCESS_GAIN} SSIM on",
        }
        for verdict, meaning in meanings.items():
            group = [describe(s) for s in sweep_rows if s["verdict"] == verdict]
            out.append(
                f"- Sweep (region px/block px): the jigsaw {meaning} {', '.join(group) if group else 'no setting'}."
            )
        region_means = [s["region_mean_ssim_to_clear"] for s in sweep_rows]
        out.append(
            f"- Every within-region shuffle keeps each region's mean colour; the region-mean image alone has SSIM "
            f"{min(region_means):.3f}-{max(region_means):.3f} "
            "to the clear image (a key-independent leak no block setting removes; smaller regions leak more)."
        )
    return out
