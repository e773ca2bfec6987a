"""Attacks on VisualMixer-protected federated learning (threat model: docs/threat_model.md).

* :mod:`.gradient_inversion` - reconstruct a client's training images from its model update.
* :mod:`.recognition` - does a classifier trained on clear images recognise obfuscated ones?
* :mod:`.jigsaw` - reassemble shuffled blocks by edge compatibility, without the key.
* :mod:`.scoring` - SSIM/PSNR of a reconstruction against the clear and the obfuscated image.
* :mod:`.learned` - learned de-obfuscation: a U-Net trained on public images obfuscated under attacker keys.
* :mod:`.obfuscated_recognition` - a classifier trained on obfuscated public data recognises victims.
* :mod:`.candidate_search` - smoothness-guided candidate search (jigsaw without oracle block sizes).
* :mod:`.chain` - curious server: gradient inversion, then learned de-obfuscation.
* :mod:`.frontier` - the privacy axis (strongest attack per setting) and the accuracy-privacy Pareto front.
* :mod:`.regions` - what a within-region shuffle keeps (sorted values, means, thumbnail).
"""

from fl_vmix.evaluation.attacks.candidate_search import CandidateSearchResult, candidate_search
from fl_vmix.evaluation.attacks.chain import (
    GEIPING_ITERATIONS_CIFAR,
    GEIPING_ITERATIONS_IMAGENET,
    ChainConfig,
    ChainResult,
    chained_attack,
    invert_single_image_updates,
)
from fl_vmix.evaluation.attacks.frontier import pareto_front, plot_frontier, privacy_axis, strongest_attack
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
from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    LearnedAttackResult,
    LearnedDeobfuscator,
    ReconstructionUNet,
    TrainingHistory,
    attack_features,
    attacker_key,
    keyed_method_factory,
    score_learned_attack,
    train_deobfuscator,
)
from fl_vmix.evaluation.attacks.obfuscated_recognition import (
    ClassifierConfig,
    ObfuscatedRecognitionResult,
    obfuscated_recognition_attack,
    train_classifier,
)
from fl_vmix.evaluation.attacks.recognition import recognition_accuracy
from fl_vmix.evaluation.attacks.regions import region_means, region_quantiles, region_sorted, thumbnail
from fl_vmix.evaluation.attacks.scoring import ReconstructionScore, match_to_references, score_reconstruction

__all__ = [
    "GEIPING_ITERATIONS_CIFAR",
    "GEIPING_ITERATIONS_IMAGENET",
    "CandidateSearchResult",
    "ChainConfig",
    "ChainResult",
    "ClassifierConfig",
    "InversionResult",
    "JigsawResult",
    "LearnedAttackConfig",
    "LearnedAttackResult",
    "LearnedDeobfuscator",
    "ObfuscatedRecognitionResult",
    "ReconstructionScore",
    "ReconstructionUNet",
    "TrainingHistory",
    "analytic_linear_inversion",
    "attack_features",
    "attacker_key",
    "blocks_in_place",
    "candidate_search",
    "chained_attack",
    "client_update",
    "extract_blocks",
    "infer_labels",
    "insert_blocks",
    "invert_gradients",
    "invert_single_image_updates",
    "keyed_method_factory",
    "match_to_references",
    "neighbours_correct",
    "obfuscated_recognition_attack",
    "pareto_front",
    "plot_frontier",
    "privacy_axis",
    "random_block_permutation",
    "recognition_accuracy",
    "region_means",
    "region_quantiles",
    "region_sorted",
    "score_learned_attack",
    "score_reconstruction",
    "shuffle_blocks",
    "solve_jigsaw",
    "solve_jigsaw_per_region",
    "strongest_attack",
    "thumbnail",
    "total_variation",
    "train_classifier",
    "train_deobfuscator",
]
