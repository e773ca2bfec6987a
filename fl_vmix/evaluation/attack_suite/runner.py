"""Run every attack against every privacy setting and write the results (``run_suite``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_vmix.evaluation.attack_suite.oracle import (
    jigsaw_success,
    jigsaw_verdict,
    jigsaw_with_oracle_sizes,
    region_means,
)
from fl_vmix.evaluation.attack_suite.settings import (
    ATTACK_COLUMNS,
    INVERSION_SUCCESS_SSIM,
    RECOGNITION_ALPHA,
    SHUFFLE_METHODS,
    SWEEP_COLUMNS,
    TRAINING_METHODS,
    SubjectResult,
    SuiteSettings,
    attack_row,
)
from fl_vmix.evaluation.attack_suite.subjects import (
    AttackSuiteError,
    Subject,
    client_batch,
    client_key,
    evaluation_images,
    find_clear_model,
    generator,
    initial_global_model,
    label_subjects,
    subject_from_spec,
    subjects_from_runs,
    trained_global_model,
)
from fl_vmix.evaluation.attack_suite.updates import observed_update
from fl_vmix.evaluation.attack_suite.writing import write_grid, write_markdown
from fl_vmix.evaluation.attacks import (
    ReconstructionScore,
    invert_gradients,
    match_to_references,
    recognition_accuracy,
    score_reconstruction,
)
from fl_vmix.factory import build_privacy, dataset_shape
from fl_vmix.privacy import VisualMixer
from fl_vmix.privacy.mixer import MixParams
from fl_vmix.privacy.shuffle import VisualMixerMethod
from fl_vmix.privacy.similarity import capped_mean
from fl_vmix.tables import write_csv
from fl_vmix.training.loops import normalise
from fl_vmix.training.obfuscation import obfuscate

logger = logging.getLogger("fl_vmix.attacks")

TestImages = tuple[np.ndarray, np.ndarray, np.ndarray, str]


@dataclass(frozen=True)
class Obfuscated:
    """A batch as the client trains on it; for VisualMixer also the shuffle (the key holder's oracle)."""

    images: torch.Tensor
    mix_params: MixParams | None = None
    mixer: VisualMixer | None = None

    def head(self, n: int) -> Obfuscated:
        params = self.mix_params
        if params is not None:
            params = replace(params, sample_ids=params.sample_ids[:n], levels=params.levels[:n])
        return Obfuscated(self.images[:n], params, self.mixer)


def _to_obfuscated(score: ReconstructionScore) -> dict[str, float]:
    """Mean SSIM/PSNR of a reconstruction to the images the client trained on (scored with that reference)."""
    assert score.ssim_to_obfuscated is not None and score.psnr_to_obfuscated is not None
    return {
        "ssim_to_obfuscated": capped_mean(score.ssim_to_obfuscated),
        "psnr_to_obfuscated": capped_mean(score.psnr_to_obfuscated),
    }


def protect_batch(subject: Subject, key: bytes, images: torch.Tensor, ids: torch.Tensor) -> Obfuscated:
    """The subject's method under ``key`` at epoch 0, with VisualMixer's parameters when it shuffles."""
    method = build_privacy(subject.privacy, key)
    protected = method.protect(images, ids, 0)
    mixer = method.mixer if isinstance(method, VisualMixerMethod) else None
    return Obfuscated(protected.images, protected.params, mixer)


def inversion_attack(
    subject: Subject,
    model: nn.Module,
    model_tag: str,
    clear: torch.Tensor,
    obfuscated: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    local_steps: int,
    settings: SuiteSettings,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Invert the updates of ``len(clear) // batch_size`` client batches; one CSV row and the
    reconstructions (paired with the images the client trained on)."""
    start = time.perf_counter()
    num_classes, channels, size = dataset_shape(subject.experiment)
    model.train()  # the client trains in train mode
    n = (clear.shape[0] // batch_size) * batch_size
    recons, labels_ok = [], 0
    for b, lo in enumerate(range(0, n, batch_size)):
        sl = slice(lo, lo + batch_size)
        noise = generator(
            settings.seed, "update", subject.seed_tag, model_tag, str(batch_size), str(local_steps), str(b)
        )
        update = observed_update(
            subject, model, obfuscated[sl], labels[sl], local_steps=local_steps, lr=settings.local_lr, generator=noise
        )
        result = invert_gradients(
            model,
            update,
            batch_size=batch_size,
            image_shape=(channels, size, size),
            num_classes=num_classes,
            local_steps=local_steps,
            local_lr=settings.local_lr,
            iterations=settings.inversion_iterations,
            tv_weight=settings.tv_weight,
            restarts=settings.inversion_restarts,
            seed=settings.seed + b,
            input_transform=normalise,
            device=settings.device,
        )
        labels_ok += int((result.labels.sort().values == labels[sl].sort().values).sum())
        recons.append(match_to_references(result.images, obfuscated[sl]))
    recon = torch.cat(recons)
    score = score_reconstruction(recon, clear[:n], obfuscated[:n])
    base = score_reconstruction(obfuscated[:n], clear[:n])
    ssim_clear = capped_mean(score.ssim_to_clear)
    note = {
        "dp_sgd": "Opacus DP-SGD update (clipped, noised)",
        "central_dp": "update clipped as by Flower; server noise comes after aggregation",
    }.get(subject.method, "")
    row = attack_row(
        subject,
        "inversion",
        model=model_tag,
        batch_size=batch_size,
        local_steps=local_steps,
        n=n,
        ssim_to_clear=ssim_clear,
        psnr_to_clear=capped_mean(score.psnr_to_clear),
        **_to_obfuscated(score),
        obfuscated_ssim_to_clear=capped_mean(base.ssim_to_clear),
        labels_correct=labels_ok / n,
        success=ssim_clear >= INVERSION_SUCCESS_SSIM,
        seconds=time.perf_counter() - start,
        note=f"{settings.inversion_iterations} iterations, tv {settings.tv_weight}, labels inferred"
        + (f"; {note}" if note else ""),
    )
    return row, recon


def recognition_attack(
    subject: Subject, clear_model: nn.Module | None, test: TestImages, settings: SuiteSettings, clear_note: str
) -> dict[str, Any]:
    """Accuracy of the clear-data model on this setting's obfuscated test images, next to chance."""
    from scipy.stats import binomtest

    if clear_model is None:
        return attack_row(subject, "recognition", applicable=False, note=clear_note)
    start = time.perf_counter()
    images, labels, ids, source = test
    method = build_privacy(subject.privacy, client_key(settings.seed, "recognition", subject.seed_tag))
    split = obfuscate(method, images, labels, ids, epoch=0, vfe_window=subject.privacy.region_size)
    result = recognition_accuracy(clear_model, split.images, split.labels, input_transform=normalise)
    n = int(result["n"])
    baseline = max(result["chance"], result["majority_rate"])
    p_value = binomtest(round(result["accuracy"] * n), n, baseline, alternative="greater").pvalue
    note = f"{n} images of the {source}, fresh key; {clear_note}"
    if subject.method in TRAINING_METHODS:
        note += "; training-level method: the images themselves are clear"
    return attack_row(
        subject,
        "recognition",
        model="clear",
        n=n,
        ssim_to_clear=split.ssim,
        psnr_to_clear=split.psnr,
        obfuscated_ssim_to_clear=split.ssim,
        accuracy=result["accuracy"],
        chance=result["chance"],
        majority_rate=result["majority_rate"],
        p_value=float(p_value),
        success=bool(p_value < RECOGNITION_ALPHA),
        seconds=time.perf_counter() - start,
        note=note,
    )


def jigsaw_attack(
    subject: Subject, clear: torch.Tensor, obf: Obfuscated, settings: SuiteSettings
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Jigsaw row for a setting (not applicable unless the method shuffles blocks)."""
    if subject.method not in SHUFFLE_METHODS or obf.mixer is None or obf.mix_params is None:
        return attack_row(
            subject, "jigsaw", applicable=False, note="not applicable: the method does not shuffle blocks"
        ), None
    start = time.perf_counter()
    mixer = obf.mixer
    outcome = jigsaw_with_oracle_sizes(obf.images, mixer, obf.mix_params, settings.jigsaw_refine_steps)
    score = score_reconstruction(outcome.images, clear, obf.images)
    base = score_reconstruction(obf.images, clear)
    ssim_clear, ssim_base = capped_mean(score.ssim_to_clear), capped_mean(base.ssim_to_clear)
    notes = [
        jigsaw_verdict(outcome.blocks_in_place, ssim_clear, ssim_base),
        f"grid {mixer.region_size} px, mean block {outcome.mean_block_size:.2f} px",
    ]
    if mixer.targeted and len(mixer.block_sizes) > 1:
        notes.append("per-region block sizes given as an oracle (upper bound)")
    if mixer.permute_channels:
        notes.append("channel order not undone")
    row = attack_row(
        subject,
        "jigsaw",
        model="",
        n=clear.shape[0],
        ssim_to_clear=ssim_clear,
        psnr_to_clear=capped_mean(score.psnr_to_clear),
        **_to_obfuscated(score),
        obfuscated_ssim_to_clear=ssim_base,
        blocks_in_place=outcome.blocks_in_place,
        neighbours_correct=outcome.neighbours_correct,
        success=jigsaw_success(outcome.blocks_in_place, ssim_clear, ssim_base),
        seconds=time.perf_counter() - start,
        note="; ".join(notes),
    )
    return row, outcome.images


def jigsaw_sweep(
    clear: torch.Tensor,
    ids: torch.Tensor,
    settings: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
    refine_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Item 6: the jigsaw attack against VisualMixer settings, on clear images mixed in-process.

    Each setting is VisualMixer keyword arguments (``region_size``, ``block_sizes``, ``target_ratio``,
    ``permute_channels``, ...) under a fresh key. Rows also give the SSIM of the region-mean image
    (each region's average colour), which every within-region shuffle leaks whatever the key.
    """
    rows = []
    for i, kwargs in enumerate(settings):
        start = time.perf_counter()
        mixer = VisualMixer(client_key(seed, "sweep", str(i)), **kwargs)
        mix = mixer.mix(clear, ids, 0)
        outcome = jigsaw_with_oracle_sizes(mix.images, mixer, mix.params, refine_steps)
        score = score_reconstruction(outcome.images, clear)
        base = capped_mean(score_reconstruction(mix.images, clear).ssim_to_clear)
        ssim_clear = capped_mean(score.ssim_to_clear)
        region_mean_ssim = capped_mean(
            score_reconstruction(region_means(clear, mixer.region_size), clear).ssim_to_clear
        )
        rows.append(
            {
                "region_size": mixer.region_size,
                "block_sizes": json.dumps(list(mixer.block_sizes)),
                "target_ratio": "" if mixer.target_ratio is None else mixer.target_ratio,
                "permute_channels": mixer.permute_channels,
                "mean_block_size": outcome.mean_block_size,
                "n": clear.shape[0],
                "blocks_in_place": outcome.blocks_in_place,
                "neighbours_correct": outcome.neighbours_correct,
                "obfuscated_ssim_to_clear": base,
                "ssim_to_clear": ssim_clear,
                "psnr_to_clear": capped_mean(score.psnr_to_clear),
                "ssim_gain": ssim_clear - base,
                "region_mean_ssim_to_clear": region_mean_ssim,
                "success": jigsaw_success(outcome.blocks_in_place, ssim_clear, base),
                "verdict": jigsaw_verdict(outcome.blocks_in_place, ssim_clear, base),
                "seconds": time.perf_counter() - start,
            }
        )
        logger.info(
            "sweep %d/%d %s: in place %.2f, SSIM %.3f -> %.3f",
            i + 1,
            len(settings),
            kwargs,
            outcome.blocks_in_place,
            base,
            ssim_clear,
        )
    return rows


def attack_subject(
    subject: Subject, settings: SuiteSettings, clear_model: nn.Module | None, clear_note: str, test: TestImages | None
) -> SubjectResult:
    """All attacks against one privacy setting."""
    logger.info("attacking %s (%s)", subject.label, subject.params_text)
    clear, labels, ids = client_batch(subject.experiment, max(settings.images, settings.n_inversion), settings.seed)
    obf = protect_batch(subject, client_key(settings.seed, "client", subject.seed_tag), clear, ids)
    out = SubjectResult(subject, clear=clear[: settings.images], obfuscated=obf.images[: settings.images])

    models = [("initial", initial_global_model(subject.experiment))]
    if settings.attack_trained and subject.runs and (subject.runs[0] / "model.pt").is_file():
        models.append(("trained", trained_global_model(subject.experiment, subject.runs[0])))
    m = settings.n_inversion
    for tag, model in models:
        for steps in settings.local_steps:
            for batch_size in settings.inversion_batch_sizes:
                row, recon = inversion_attack(
                    subject, model, tag, clear[:m], obf.images[:m], labels[:m], batch_size, steps, settings
                )
                out.rows.append(row)
                if tag == "initial" and batch_size == 1 and steps == settings.local_steps[0] and out.inverted is None:
                    out.inverted = recon
    out.rows.append(
        recognition_attack(subject, clear_model, test, settings, clear_note)
        if test is not None
        else attack_row(subject, "recognition", applicable=False, note=clear_note)
    )
    row, out.reassembled = jigsaw_attack(subject, clear[: settings.images], obf.head(settings.images), settings)
    out.rows.append(row)
    return out


def run_suite(
    run_dirs: Sequence[Path],
    experiment: str,
    out_root: Path = Path("experiments/results"),
    settings: SuiteSettings | None = None,
    methods: Sequence[Sequence[str]] = (),
) -> Path:
    """Run every attack on every privacy setting of ``run_dirs`` (plus ``methods`` specs); returns the output folder."""
    settings = settings or SuiteSettings()
    if not experiment or "/" in experiment:
        raise AttackSuiteError(f"--experiment must be a plain folder name, got {experiment!r}")
    subjects = subjects_from_runs(run_dirs)
    present = {(s.method, s.params_text) for s in subjects}
    for spec in methods:
        extra = subject_from_spec(subjects[0].experiment, spec)
        if (extra.method, extra.params_text) not in present:
            subjects.append(extra)
            present.add((extra.method, extra.params_text))
    subjects = label_subjects(subjects)
    out_dir = Path(out_root) / experiment
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    clear_model, clear_note = find_clear_model(subjects)
    if clear_model is None:
        logger.warning("recognition attack %s", clear_note)
    reference = subjects[0].experiment
    test = evaluation_images(reference, settings.recognition_images, settings.seed) if clear_model is not None else None
    results = [attack_subject(s, settings, clear_model, clear_note, test) for s in subjects]
    rows = [r for res in results for r in res.rows]
    write_csv(out_dir / "attacks.csv", ATTACK_COLUMNS, rows, float_format=".6g")
    write_grid(out_dir / "attacks_grid.png", results, settings.grid_images)

    sweep_rows: list[dict[str, Any]] = []
    sweep_source = ""
    if settings.sweep:
        images, _, ids, sweep_source = evaluation_images(reference, settings.sweep_images, settings.seed + 1)
        clear = torch.from_numpy(images).float() / 255
        sweep_rows = jigsaw_sweep(
            clear, torch.from_numpy(ids), settings.sweep, seed=settings.seed, refine_steps=settings.jigsaw_refine_steps
        )
        write_csv(out_dir / "jigsaw_sweep.csv", SWEEP_COLUMNS, sweep_rows, float_format=".6g")
    write_markdown(
        out_dir / "attacks.md",
        experiment,
        subjects,
        rows,
        sweep_rows,
        settings,
        clear_note,
        sweep_source,
        time.perf_counter() - started,
    )
    return out_dir
