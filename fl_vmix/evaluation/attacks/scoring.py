"""Scoring a reconstruction against the two images an attacker could be said to have recovered.

An attack on VisualMixer can "succeed" in two different senses, and conflating them is how an
obfuscation scheme ends up looking weaker or stronger than it is:

* against the **clear** image: the attacker sees what the person sees; this is the privacy breach;
* against the **obfuscated** image the client trained on: the attacker recovered the model's input
  faithfully, but that input is still shuffled, so nobody recognises it without the key.

Gradient inversion on a protected client is expected to score high against the obfuscated image and low
against the clear one; on an unprotected client the two references coincide. Every attack therefore
reports both, computed by :func:`score_reconstruction`.

SSIM/PSNR are ``fl_vmix.privacy.similarity.ssim/psnr`` (standard 11-px Gaussian window, data range 1,
images in [0, 1] and at least 11 px a side), so attack numbers are comparable with every other report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_vmix.privacy.similarity import psnr, ssim


def _check_pair(recon: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    if recon.dim() != 4:
        raise ValueError(f"reconstruction must be [B, C, H, W], got shape {tuple(recon.shape)}; add a batch dim")
    if recon.shape != reference.shape:
        raise ValueError(
            f"reconstruction shape {tuple(recon.shape)} differs from the {name} reference "
            f"{tuple(reference.shape)}; pass the reference images for the same batch, in the same order"
        )


@dataclass(frozen=True)
class ReconstructionScore:
    """Per-image similarity of a reconstruction to the clear and (optionally) obfuscated originals.

    Each field is a ``[B]`` tensor; the ``*_obfuscated`` fields are ``None`` when no obfuscated
    reference was given (e.g. an unprotected client, whose clear and training images coincide).
    """

    ssim_to_clear: torch.Tensor
    psnr_to_clear: torch.Tensor
    ssim_to_obfuscated: torch.Tensor | None = None
    psnr_to_obfuscated: torch.Tensor | None = None

    def summary(self) -> dict[str, float]:
        """Batch means as plain floats, for tables and JSON reports (PSNR mean may be inf)."""
        out = {"ssim_to_clear": float(self.ssim_to_clear.mean()), "psnr_to_clear": float(self.psnr_to_clear.mean())}
        if self.ssim_to_obfuscated is not None and self.psnr_to_obfuscated is not None:
            out["ssim_to_obfuscated"] = float(self.ssim_to_obfuscated.mean())
            out["psnr_to_obfuscated"] = float(self.psnr_to_obfuscated.mean())
        return out


def score_reconstruction(
    recon: torch.Tensor, clear: torch.Tensor, obfuscated: torch.Tensor | None = None
) -> ReconstructionScore:
    """SSIM and PSNR of ``recon`` against the clear images and, if given, the obfuscated ones.

    All tensors are ``[B, C, H, W]`` in [0, 1] and image ``i`` of each refers to the same sample.
    Order matters for attacks that do not know which reconstruction is which sample (gradient
    inversion of a batch): align them first, e.g. with :func:`match_to_references`.
    """
    recon = recon.detach().cpu()
    clear = clear.detach().cpu()
    _check_pair(recon, clear, "clear")
    score = {"ssim_to_clear": ssim(recon, clear), "psnr_to_clear": psnr(recon, clear)}
    if obfuscated is not None:
        obfuscated = obfuscated.detach().cpu()
        _check_pair(recon, obfuscated, "obfuscated")
        score["ssim_to_obfuscated"] = ssim(recon, obfuscated)
        score["psnr_to_obfuscated"] = psnr(recon, obfuscated)
    return ReconstructionScore(**score)


def match_to_references(recon: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Reorder a batch of reconstructions so image ``i`` best matches reference ``i``.

    Gradient inversion of a batch recovers a *set* of images: the gradient is a sum over the batch,
    so the order of the dummy images is arbitrary. The standard evaluation (Geiping et al. 2020)
    pairs each reconstruction with a reference; we solve the pairing as an assignment on pixel MSE
    (scipy's Hungarian solver) so no reference is used twice. Which reference to pair against is the
    caller's choice and should be the one the attack targets (the image the client trained on).
    """
    from scipy.optimize import linear_sum_assignment

    _check_pair(recon, reference, "matching")
    r = recon.detach().cpu().flatten(1).double()
    t = reference.detach().cpu().flatten(1).double()
    cost = torch.cdist(t, r).pow(2)  # [reference, recon]
    _, cols = linear_sum_assignment(cost.numpy())
    return recon[torch.as_tensor(cols, device=recon.device)]
