"""Experiment-level privacy attacks (issue 6, items 2-6): every attack against every privacy setting.

The attack library (:mod:`fl_vmix.evaluation.attacks`) holds the attacks themselves; this package runs
them in the setting of a finished federated experiment and writes one report per experiment::

    python -m fl_vmix.evaluation.attack_suite --runs RUN_DIR [RUN_DIR ...] --experiment NAME \
        [--out experiments/results] [--images 8] [--inversion-iterations 300] [--seed 0] \
        [--method visualmixer region_size=16 'block_sizes=[4,2]'] [--all-methods] [--trained]

Inputs. Each ``RUN_DIR`` is a folder written by :mod:`fl_vmix.recording` (``config.json``,
``model.pt``). Runs are grouped by privacy setting (method and parameters); all must use the same
dataset. ``--method NAME key=value ...`` adds a setting composed from ``fl_vmix/conf/privacy/NAME.yaml`` (Hydra
overrides) that has no run of its own, and ``--all-methods`` adds every ``conf/privacy/*.yaml`` not
already present: such settings are attacked with the architecture of the first run (initial weights
only, there is no trained model for them).

Attacks (threat model: ``docs/threat_model.md``):

* ``inversion`` (A1, the server): client 0's training images are obfuscated with the method under a
  fresh client key, the client's update is computed with :func:`~fl_vmix.evaluation.attacks.client_update`
  from the run's *initial* global model (seeded like the server; with ``--trained`` also from the
  final ``model.pt``), and :func:`~fl_vmix.evaluation.attacks.invert_gradients` reconstructs the batch
  with labels inferred from the last layer. The update is one SGD pass over a batch of ``batch_size``
  images repeated ``local_steps`` times (the Inverting-Gradients FedAvg setting), not the run's Adam
  epochs. DP-SGD clients send an Opacus DP-SGD update (per-sample clipping to ``max_grad_norm``,
  Gaussian noise ``noise_multiplier * max_grad_norm``, seeded); central-DP clients send their update
  clipped to ``clipping_norm`` by Flower's own clipping function, because the server adds the noise only
  after aggregation, so the server (the attacker) sees each clipped update noiseless. Cosine matching is
  blind to the update's scale, so clipping alone changes nothing for this attack.
* ``recognition`` (A2): the ``model.pt`` of the run whose method is ``none`` (a classifier trained on
  clear images) classifies the dataset's test images obfuscated with a fresh key.
* ``jigsaw`` (A2): for block-shuffling methods (``visualmixer``, ``block_shuffle``), the obfuscated
  client images are reassembled by edge compatibility with the grid from the config. VisualMixer with a
  VFE target picks a block size per region; the solver is then given the true per-region block sizes
  (an *oracle*, so the result is an upper bound on an attacker who must estimate them). Channel-order
  permutation is not undone. Other methods get a row marked not applicable.
* ``sweep`` (item 6): which VisualMixer settings stop the jigsaw, measured on real test images made
  in-process (no federated run), into ``jigsaw_sweep.csv``.

Success, per attack (the ``success`` column; constants below):

* inversion: mean SSIM of the reconstruction to the *clear* images >= ``INVERSION_SUCCESS_SSIM`` (0.5),
  i.e. the attacker gets a recognisable picture of what the client holds;
* recognition: accuracy above the better chance level (uniform or majority class) with one-sided
  binomial p < ``RECOGNITION_ALPHA`` (0.01);
* jigsaw: at least ``JIGSAW_SUCCESS_IN_PLACE`` (half) of the shuffled blocks back in place, or a
  reassembly with SSIM to clear >= 0.5 that is at least ``JIGSAW_SUCCESS_GAIN`` (0.1) above the SSIM of
  the obfuscated image itself.

Outputs in ``<out>/<experiment>/``: ``attacks.csv`` (:data:`ATTACK_COLUMNS`), ``attacks_grid.png`` (per
setting: clear / obfuscated / inverted / jigsaw-reassembled), ``jigsaw_sweep.csv`` and ``attacks.md``
(tables and findings for the report).

Modules: :mod:`.subjects` (runs and privacy settings, their data and models), :mod:`.updates` (the
update the server sees), :mod:`.oracle` (the key holder's jigsaw oracle), :mod:`.runner` (the
attacks and ``run_suite``), :mod:`.writing` (grid and markdown), :mod:`.settings` (scales, success
rules, columns), ``__main__`` (the command line).
"""

from fl_vmix.evaluation.attack_suite.runner import run_suite
from fl_vmix.evaluation.attack_suite.settings import ATTACK_COLUMNS, SWEEP_COLUMNS, SuiteSettings
from fl_vmix.evaluation.attack_suite.subjects import AttackSuiteError

__all__ = ["ATTACK_COLUMNS", "SWEEP_COLUMNS", "AttackSuiteError", "SuiteSettings", "run_suite"]
