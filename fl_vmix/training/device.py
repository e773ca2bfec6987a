"""Where a process computes: the device a setting names, and mixed precision on it.

``device`` is ``auto`` (CUDA where this process sees a GPU, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. It is resolved in the process that computes (a ClientApp, the ServerApp), because each
process sees its own GPUs: in Flower's simulation Ray hides every GPU from a client that reserved none
(``engine.num_gpus_per_client=0``), so ``auto`` trains such clients on the CPU.

``amp`` is ``auto``, ``off``, ``bf16`` or ``fp16``: :func:`autocast` runs the forward pass (and the loss) in
that precision; fp16 needs a gradient scaler (:func:`grad_scaler`) and CUDA, bf16 works on CPU and CUDA.
``auto`` is bf16 where the hardware computes in bf16 natively (:func:`native_bf16`) and fp32 (``off``)
elsewhere: without bf16 instructions torch emulates it, which is slower than fp32 (on an AVX2-only
AMD EPYC a small CNN's training step ran about 4x slower under bf16 autocast). Trainers that must stay
in fp32 (DP-SGD: Opacus' per-sample gradients) resolve ``auto`` to ``off``.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision this process cannot use; the message names the setting and the fix."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names on this process, or DeviceError when this process cannot use it."""
    if spec == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not cuda_available():
            raise DeviceError(
                f"device={spec} but this process sees no CUDA GPU (torch.cuda.is_available() is False: torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use device=auto or device=cpu, "
                "or install a CUDA build of torch on a machine with a GPU"
            )
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={spec} but this process sees {torch.cuda.device_count()} CUDA GPU(s) (0 to "
                f"{torch.cuda.device_count() - 1}): choose one of those, or device=cuda"
            )
        return device
    raise DeviceError(f"device={spec!r} is invalid: use auto, cpu, cuda or cuda:N")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively, so bf16 autocast is faster than fp32 there.

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and later). x86 CPUs:
    the AVX512-BF16 or AMX instructions, as torch's own CPU feature probe (``torch.cpu``, cpuinfo)
    reports them; ``torch.backends.cpu.get_cpu_capability()`` says only ``AVX512``, which CPUs
    without bf16 instructions report too. Other CPUs (ARM included): oneDNN's bf16 support
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``), which on ARM means the BF16 extension.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(amp: str, device: torch.device, *, fp32_only: bool = False) -> str:
    """The precision ``amp`` means on ``device``: ``auto`` becomes ``bf16`` where it is native, else ``off``
    (always ``off`` with ``fp32_only``: trainers that cannot run in mixed precision)."""
    if amp != "auto":
        return amp
    return "bf16" if not fp32_only and native_bf16(device) else "off"


def check_amp(amp: str, device: torch.device) -> None:
    """DeviceError when ``amp`` cannot run on ``device``."""
    if amp not in ("auto", "off", *AMP_DTYPES):
        raise DeviceError(f"amp={amp!r} is invalid: use auto, off, bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise DeviceError(
            f"amp=fp16 needs a CUDA device, and this process computes on {device}: use amp=bf16 (CPU and CUDA) "
            "or amp=off"
        )


@dataclass(frozen=True)
class Compute:
    """Where and in which precision a process trains and evaluates."""

    device: torch.device
    amp: str = "off"  # resolved: off, bf16 or fp16 (never auto)

    @classmethod
    def of(cls, device: str, amp: str = "off", *, fp32_only: bool = False) -> Compute:
        """Resolve the ``device`` and ``amp`` settings on this process (DeviceError if it cannot);
        ``fp32_only``: the trainer runs only in fp32, so ``auto`` means ``off`` (explicit bf16/fp16 is the
        caller's to refuse)."""
        resolved = resolve_device(device)
        check_amp(amp, resolved)
        return cls(resolved, resolve_amp(amp, resolved, fp32_only=fp32_only))

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass in the ``amp`` precision (nothing changes with ``amp=off``)."""
        dtype = self.amp_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
        if self.amp != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)


CPU = Compute(torch.device("cpu"))


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process (None: leave torch's default, one per core)."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
