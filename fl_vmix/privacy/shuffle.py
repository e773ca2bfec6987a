"""VisualMixer and the plain block shuffle as registry methods (keyed: each needs the client's key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from torch import Tensor

from fl_vmix.privacy.base import PrivacyMethod, ProtectedBatch
from fl_vmix.privacy.keyed import check_key
from fl_vmix.privacy.mixer import VisualMixer
from fl_vmix.privacy.vfe import VFEMethod


class VisualMixerMethod(PrivacyMethod):
    """VisualMixer as a privacy method: keyed, VFE-targeted region shuffle (not DP: epsilon is None).

    ``key`` is required (bytes, at least 16): it never comes from the experiment config but from the
    node (``fl_vmix.apps.keys.node_key``). ``mixer`` is the key holder's :class:`VisualMixer`; only
    evaluation code that plays the key holder (oracle scoring of attacks) should touch it.
    """

    name: ClassVar[str] = "visualmixer"

    def __init__(
        self,
        key: bytes | None = None,
        region_size: int = 8,
        block_sizes: Sequence[int] = (2, 1),
        target_ratio: float | None = 3.0,
        target_vfe: float | None = None,
        vfe_method: VFEMethod = "corrected",
        mode: Literal["static", "dynamic"] = "static",
        permute_channels: bool = False,
    ) -> None:
        key = check_key(key, owner=type(self).__name__)
        self.params = {
            "region_size": region_size,
            "block_sizes": list(block_sizes),
            "target_ratio": target_ratio,
            "target_vfe": target_vfe,
            "vfe_method": vfe_method,
            "mode": mode,
            "permute_channels": permute_channels,
        }  # the key is deliberately not a reportable parameter
        self.epsilon = None
        self.mixer = VisualMixer(
            key,
            region_size=int(region_size),
            block_sizes=tuple(int(b) for b in block_sizes),
            target_ratio=target_ratio,
            target_vfe=target_vfe,
            vfe_method=vfe_method,
            mode=mode,
            permute_channels=bool(permute_channels),
        )

    def _protect(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> ProtectedBatch:
        result = self.mixer.mix(images, sample_ids, epoch, dataset)
        return ProtectedBatch(result.images, report=result.report, params=result.params)


class BlockShuffleMethod(VisualMixerMethod):
    """Plain obfuscation baseline: one block size everywhere, no VFE target (the authors' prototype in practice)."""

    name: ClassVar[str] = "block_shuffle"

    def __init__(
        self,
        key: bytes | None = None,
        region_size: int = 8,
        block_size: int = 1,
        mode: Literal["static", "dynamic"] = "static",
        permute_channels: bool = True,
    ) -> None:
        super().__init__(
            key,
            region_size=region_size,
            block_sizes=(block_size,),
            target_ratio=None,
            target_vfe=None,
            mode=mode,
            permute_channels=permute_channels,
        )
        self.params = {
            "region_size": region_size,
            "block_size": block_size,
            "mode": mode,
            "permute_channels": permute_channels,
        }
