"""Device selection, mixed precision and the CUDA path (its tests run where CUDA exists and skip elsewhere)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from fl_vmix.apps.keys import derived_simulation_key
from fl_vmix.checks import check_experiment
from fl_vmix.experiment import ConfigError
from fl_vmix.factory import build_privacy, client_data, compute_for, initial_model, local_client
from fl_vmix.training import device as device_module
from fl_vmix.training.device import CPU, Compute, DeviceError, check_amp, resolve_device, set_threads
from fl_vmix.training.loops import evaluate_model, train_epochs
from fl_vmix.training.obfuscation import obfuscate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cuda_available", lambda: False)
    monkeypatch.setattr("fl_vmix.checks.cuda_available", lambda: False)


def test_auto_and_cpu_resolve_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_with_the_fix(no_cuda, spec):
    with pytest.raises(DeviceError, match=rf"device={spec} but this process sees no CUDA GPU.*use device=auto or "):
        resolve_device(spec)


def test_fp16_needs_cuda_and_bf16_runs_anywhere():
    with pytest.raises(DeviceError, match="amp=fp16 needs a CUDA device.*use amp=bf16"):
        check_amp("fp16", torch.device("cpu"))
    check_amp("bf16", torch.device("cpu"))
    assert Compute.of("cpu", "bf16").amp_dtype == torch.bfloat16 and CPU.amp_dtype is None
    assert Compute.of("cpu").grad_scaler() is None


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").is_file(), reason="x86 Linux: /proc/cpuinfo flags"
)
def test_native_bf16_on_the_cpu_agrees_with_the_kernels_cpu_flags():
    # Independent oracle: the kernel's own list of instruction-set extensions.
    flags = _cpu_flags()
    assert device_module.native_bf16(torch.device("cpu")) == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize(
    ("native", "fp32_only", "expected"), [(True, False, "bf16"), (False, False, "off"), (True, True, "off")]
)
def test_auto_is_bf16_only_where_native_and_the_trainer_allows_it(monkeypatch, native, fp32_only, expected):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: native)
    compute = Compute.of("cpu", "auto", fp32_only=fp32_only)
    assert compute.amp == expected
    assert Compute.of("cpu", "off").amp == "off" and Compute.of("cpu", "bf16", fp32_only=fp32_only).amp == "bf16"


def test_auto_keeps_dp_sgd_in_fp32_on_bf16_hardware(tiny_experiment, monkeypatch):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)  # as on a CPU with AMX
    assert compute_for(tiny_experiment("amp=auto")).amp == "bf16"
    dp = tiny_experiment("amp=auto", "privacy=dp_sgd")
    assert compute_for(dp).amp == "off"
    check_experiment(dp)  # auto is allowed with DP-SGD (it means fp32 there); bf16 is refused (below)


def test_a_simulation_asking_for_cuda_stops_before_any_round(tiny_experiment, no_cuda):
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        check_experiment(tiny_experiment("device=cuda", "engine.num_gpus_per_client=0.5"))
    with pytest.raises(ConfigError, match="num_gpus_per_client=0.5 but this machine has no CUDA GPU: Ray would wait"):
        check_experiment(tiny_experiment("engine.num_gpus_per_client=0.5"))
    with pytest.raises(DeviceError, match="amp=fp16 needs a CUDA device"):
        check_experiment(tiny_experiment("amp=fp16"))
    with pytest.raises(ConfigError, match="amp=bf16 with privacy=dp_sgd.*set amp=off \\(or amp=auto"):
        check_experiment(tiny_experiment("amp=bf16", "privacy=dp_sgd"))
    check_experiment(tiny_experiment("device=cpu", "amp=bf16"))


def test_cuda_needs_a_gpu_share_in_simulation(tiny_experiment, monkeypatch):
    monkeypatch.setattr("fl_vmix.checks.cuda_available", lambda: True)
    monkeypatch.setattr("fl_vmix.checks.compute_for", lambda experiment: CPU)  # no real GPU needed for the rule
    with pytest.raises(ConfigError, match="Ray hides the GPUs from clients that reserve none.*num_gpus_per_client"):
        check_experiment(tiny_experiment("device=cuda"), check_data=False)
    with pytest.raises(ConfigError, match="Ray gives each client its GPU as cuda:0"):
        check_experiment(tiny_experiment("device=cuda:1", "engine.num_gpus_per_client=1"), check_data=False)


class DtypeProbe(nn.Module):
    """A linear classifier that remembers the dtype its forward pass computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 3)
        self.seen: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        self.seen.add(out.dtype)
        return out


def test_bf16_autocast_trains_and_evaluates_on_the_cpu():
    images, labels = torch.rand(16, 3, 4, 4), torch.arange(16) % 3
    model = DtypeProbe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    compute = Compute.of("cpu", "bf16")
    metrics = train_epochs(model, images, labels, optimizer, epochs=2, batch_size=4, seed=0, compute=compute)
    assert model.seen == {torch.bfloat16} and model.linear.weight.dtype == torch.float32
    assert 0 <= metrics["train_accuracy"] <= 1 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    result = evaluate_model(model, images, labels, compute=compute)
    assert 0 <= result["accuracy"] <= 1


def test_set_threads_sets_and_none_leaves_torchs_default():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@needs_cuda
def test_a_client_trains_on_cuda_and_replies_with_cpu_weights(tiny_experiment):
    cpu, cuda = tiny_experiment("device=cpu"), tiny_experiment("device=cuda", "engine.num_gpus_per_client=1")
    node = {"partition-id": 0, "num-partitions": 2}
    weights = initial_model(cpu).state_dict()
    results = {}
    for name, experiment in (("cpu", cpu), ("cuda", cuda)):
        client = local_client(experiment, client_data(experiment, node), derived_simulation_key(0, 0))
        assert client.settings.compute.device.type == name
        results[name] = client.train(weights, 1, 1)
        assert all(v.device.type == "cpu" for v in results[name].weights.values()), "Flower's arrays are CPU arrays"
        assert 0 <= client.evaluate(results[name].weights).metrics["accuracy"] <= 1
    # The same images, batches and seeds: the weights agree up to floating-point rounding.
    for key, value in results["cpu"].weights.items():
        assert torch.allclose(value.float(), results["cuda"].weights[key].float(), atol=1e-3), key


@needs_cuda
def test_visualmixer_protects_on_cuda_exactly_as_on_the_cpu(tiny_experiment):
    experiment = tiny_experiment()
    data = client_data(experiment, {"partition-id": 0, "num-partitions": 2})
    method = build_privacy(experiment.privacy, derived_simulation_key(0, 0))
    args = (method, data.train_images, data.train_labels, data.train_ids, 0)
    on_cpu = obfuscate(*args, vfe_window=8)
    on_cuda = obfuscate(*args, vfe_window=8, device=torch.device("cuda"))
    assert on_cuda.images.device.type == "cpu" and torch.equal(on_cpu.images, on_cuda.images)


@needs_cuda
def test_fp16_trains_with_a_gradient_scaler_on_cuda():
    images, labels = torch.rand(16, 3, 4, 4), torch.arange(16) % 3
    compute = Compute.of("cuda", "fp16")
    model = DtypeProbe().to(compute.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train_epochs(model, images, labels, optimizer, epochs=1, batch_size=4, seed=0, compute=compute)
    assert model.seen == {torch.float16} and torch.isfinite(torch.tensor(metrics["train_loss"]))
