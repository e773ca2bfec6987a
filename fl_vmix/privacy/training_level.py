"""Training-level DP methods: their protection happens in training, so their image transform is the identity.

* ``dp_sgd``: every client trains with DP-SGD (per-sample clipping to ``max_grad_norm``, Gaussian
  noise ``noise_multiplier * max_grad_norm``, Poisson sampling; the loop is
  :mod:`fl_vmix.training.dp_sgd`). Epsilon is the client's, cumulative over the run, at ``delta``.
* ``central_dp``: each client clips its update to ``clipping_norm`` and the server adds Gaussian noise
  ``noise_multiplier * clipping_norm / n`` to the mean (Flower's client-side fixed clipping, wired in
  :mod:`fl_vmix.apps.dp`). Epsilon is the server accountant's, client-level, over the run.

These classes only hold and check the parameters; they know nothing of Opacus or Flower.
"""

from __future__ import annotations

from typing import ClassVar

from fl_vmix.privacy.base import TrainingLevelMethod
from fl_vmix.privacy.checks import check_delta, check_positive


class DPSGD(TrainingLevelMethod):
    """DP-SGD on every client. Epsilon is cumulative over the run, per client."""

    name: ClassVar[str] = "dp_sgd"
    delta: float

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5) -> None:
        super().__init__(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta)
        check_positive("noise_multiplier", noise_multiplier, "DP-SGD needs noise; use e.g. 1.0")
        check_positive("max_grad_norm", max_grad_norm, "per-sample clipping bound; use e.g. 1.0")
        check_delta(delta)
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.delta = float(delta)


class CentralDP(TrainingLevelMethod):
    """Central DP with client-side fixed clipping. Epsilon is the server accountant's."""

    name: ClassVar[str] = "central_dp"
    delta: float

    def __init__(self, noise_multiplier: float = 1.0, clipping_norm: float = 1.0, delta: float = 1e-5) -> None:
        super().__init__(noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, delta=delta)
        check_positive("noise_multiplier", noise_multiplier, "central DP needs noise; use e.g. 1.0")
        check_positive("clipping_norm", clipping_norm, "update clipping bound; use e.g. 1.0")
        check_delta(delta)
        self.noise_multiplier, self.clipping_norm = float(noise_multiplier), float(clipping_norm)
        self.delta = float(delta)
