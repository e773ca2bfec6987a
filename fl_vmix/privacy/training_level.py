"""Training-level DP methods: their protection happens in training, so their image transform is the identity.

* ``dp_sgd``: every client trains with DP-SGD (per-sample clipping to ``max_grad_norm``, Gaussian
  noise ``noise_multiplier * max_grad_norm``, Poisson sampling; the loop is
  :mod:`fl_vmix.training.dp_sgd`). Epsilon is per training example of one client, cumulative over the
  run, at ``delta``. It holds against the server only if the server cannot reproduce the noise or the
  sampling: by default both are drawn from generators seeded from OS entropy every round, so nobody can
  regenerate them; with the experiment's ``reproducible_noise=true`` they come from the client's keyed PRF
  (:meth:`DPSGD.secret_seeds`), which the key holder can replay (and anyone who knows the seed, when keys are
  derived from it). Opacus' ``secure_mode`` would need ``torchcsprng``.
* ``central_dp``: each client clips its update to ``clipping_norm`` and the server adds Gaussian noise
  ``noise_multiplier * clipping_norm / n`` to the mean (Flower's client-side fixed clipping, wired in
  :mod:`fl_vmix.apps.dp`). Epsilon is the server accountant's, per client (add or remove one client's
  data), over the run, for the released models: the server itself sees every clipped update before the
  noise, so central DP protects nothing from the server.

These classes only hold and check the parameters; they know nothing of Opacus or Flower.
"""

from __future__ import annotations

from typing import ClassVar

from fl_vmix.privacy.base import TrainingLevelMethod
from fl_vmix.privacy.checks import check_delta, check_positive
from fl_vmix.privacy.keyed import KeyedPRF, check_key, context_bytes


class DPSGD(TrainingLevelMethod):
    """DP-SGD on every client. Epsilon is cumulative over the run, per client."""

    name: ClassVar[str] = "dp_sgd"
    delta: float
    epsilon_unit = "example"

    def __init__(
        self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5, key: bytes | None = None
    ) -> None:
        """``key``: the client's secret, for its noise and sampling (the server builds the method without one)."""
        super().__init__(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta)
        check_positive("noise_multiplier", noise_multiplier, "DP-SGD needs noise; use e.g. 1.0")
        check_positive("max_grad_norm", max_grad_norm, "per-sample clipping bound; use e.g. 1.0")
        check_delta(delta)
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.delta = float(delta)
        settings = sorted((k, repr(v)) for k, v in self.params.items())
        self._prf = None if key is None else KeyedPRF(check_key(key, owner="DPSGD"), context_bytes("dp-sgd", settings))

    def secret_seeds(self, *public: int) -> tuple[int, int]:
        """(sampling seed, noise seed) for the round named by ``public`` integers (run seed, partition, round):
        secret to the server, reproducible for the key holder."""
        if self._prf is None:
            raise ValueError(
                "DP-SGD training needs the client's key: its noise and batch sampling must be secret from the server "
                "(otherwise the server can regenerate them and the guarantee does not hold against it); build the "
                "method with key=<the node's key>"
            )
        return self._prf.seed(*public, 0), self._prf.seed(*public, 1)


class CentralDP(TrainingLevelMethod):
    """Central DP with client-side fixed clipping. Epsilon is the server accountant's."""

    name: ClassVar[str] = "central_dp"
    delta: float
    epsilon_unit = "client"

    def __init__(self, noise_multiplier: float = 1.0, clipping_norm: float = 1.0, delta: float = 1e-5) -> None:
        super().__init__(noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, delta=delta)
        check_positive("noise_multiplier", noise_multiplier, "central DP needs noise; use e.g. 1.0")
        check_positive("clipping_norm", clipping_norm, "update clipping bound; use e.g. 1.0")
        check_delta(delta)
        self.noise_multiplier, self.clipping_norm = float(noise_multiplier), float(clipping_norm)
        self.delta = float(delta)
