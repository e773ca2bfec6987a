"""Attacks on VisualMixer-protected federated learning (threat model: docs/threat_model.md).

* :mod:`.gradient_inversion` - reconstruct a client's training images from its model update.
* :mod:`.recognition` - does a classifier trained on clear images recognise obfuscated ones?
* :mod:`.jigsaw` - reassemble shuffled blocks by edge compatibility, without the key.
* :mod:`.scoring` - SSIM/PSNR of a reconstruction against the clear and the obfuscated image.
"""

from fl_vmix.evaluation.attacks.gradient_inversion import (
    InversionResult,
    analytic_linear_inversion,
    client_update,
    infer_labels,
    invert_gradients,
    total_variation,
)
from fl_vmix.evaluation.attacks.jigsaw import (
    JigsawResult,
    blocks_in_place,
    extract_blocks,
    insert_blocks,
    neighbours_correct,
    random_block_permutation,
    shuffle_blocks,
    solve_jigsaw,
    solve_jigsaw_per_region,
)
from fl_vmix.evaluation.attacks.recognition import recognition_accuracy
from fl_vmix.evaluation.attacks.scoring import ReconstructionScore, match_to_references, score_reconstruction

__all__ = [
    "InversionResult",
    "JigsawResult",
    "ReconstructionScore",
    "analytic_linear_inversion",
    "blocks_in_place",
    "client_update",
    "extract_blocks",
    "infer_labels",
    "insert_blocks",
    "invert_gradients",
    "match_to_references",
    "neighbours_correct",
    "random_block_permutation",
    "recognition_accuracy",
    "score_reconstruction",
    "shuffle_blocks",
    "solve_jigsaw",
    "solve_jigsaw_per_region",
    "total_variation",
]
