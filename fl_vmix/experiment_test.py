"""The typed experiment: every shipped config parses, round-trips, and bad settings are named with their fix."""

from __future__ import annotations

import json

import pytest

from fl_vmix.checks import check_experiment, check_settings
from fl_vmix.experiment import (
    ConfigError,
    Experiment,
    compose,
    compose_config,
    conf_dir,
    experiment_from_run_config,
    from_recorded,
    to_run_config,
)


def every_option() -> list[str]:
    """Every group option shipped in conf/ (imagefolder needs a root, so it is composed in other tests)."""
    options = [(group.name, option.stem) for group in sorted(conf_dir().iterdir()) if group.is_dir()
               for option in sorted(group.glob("*.yaml"))]  # fmt: skip
    return [f"{group}={option}" for group, option in options if (group, option) != ("dataset", "imagefolder")]


@pytest.mark.parametrize("override", every_option())
def test_every_shipped_option_parses_and_round_trips(override):
    raw = compose_config([override])
    experiment = Experiment.from_dict(raw)
    assert experiment.to_dict() == raw, "to_dict gives back the composed tree (config.json keeps its layout)"
    assert Experiment.from_dict(json.loads(json.dumps(experiment.to_dict()))) == experiment
    assert experiment_from_run_config(to_run_config(experiment)) == experiment


def test_settings_are_typed_and_frozen():
    experiment = compose(["privacy.mode=dynamic", "partition=dirichlet", "optimizer=sgd"])
    assert experiment.privacy.dynamic and experiment.privacy.region_size == 8
    assert experiment.partition.alpha == 0.5 and experiment.partition.classes_per_partition is None
    assert experiment.optimizer.extra == {"momentum": 0.9}
    assert experiment.engine.client_cache == 16 and experiment.engine.connection is None
    with pytest.raises(AttributeError):
        experiment.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        experiment.privacy.params["region_size"] = 4  # type: ignore[index]
    assert compose(["privacy=none"]).privacy.region_size == 8, "the VFE window of methods without regions"
    assert compose(["privacy=pixel_dp_gaussian", "privacy.noise_mode=dynamic"]).privacy.dynamic


def test_new_runs_have_no_time_limit_derived_keys_and_checkpoints_every_round():
    experiment = compose()
    assert experiment.engine.timeout_s is None and experiment.engine.simulation_keys == "derived"
    assert experiment.checkpoint_every == 1 and experiment.resume is None and not experiment.tensorboard
    assert (experiment.device, experiment.amp, experiment.engine.num_gpus_per_client) == ("auto", "off", 0.0)
    assert compose(["amp=off"]).amp == "off", "a bare off (YAML false) is amp=off"


def test_a_deployment_round_waits_an_hour_for_replies_by_default():
    """Flower cannot tell that a SuperNode which crashed and came back within seconds lost the message it had
    taken: without a round timeout such a run would wait for its reply forever."""
    assert compose(["engine=deployment"]).engine.round_timeout_s == 3600.0
    assert compose(["engine=deployment", "engine.round_timeout_s=null"]).engine.round_timeout_s is None
    assert compose().engine.round_timeout_s is None, "a simulation waits for every reply"
    with pytest.raises(ConfigError, match="engine.round_timeout_s=0 is invalid: set engine.round_timeout_s to a"):
        compose(["engine=deployment", "engine.round_timeout_s=0"])


@pytest.mark.parametrize(
    "preset, model, dataset, clients",
    [
        ("paper_cifar10", "resnet18", "cifar10", 10),
        ("paper_cifar100", "shufflenet_v2", "cifar100", 20),
        ("paper_medmnist", "resnet18", "retinamnist", 10),
    ],
)
def test_paper_presets_set_the_scale_and_overrides_still_win(preset, model, dataset, clients):
    experiment = compose([f"preset={preset}"])
    assert (experiment.model.name, experiment.dataset.name, experiment.num_clients) == (model, dataset, clients)
    assert experiment.num_rounds == 100 and experiment.dataset.data_fraction == 1.0 and experiment.experiment == preset
    overridden = compose([f"preset={preset}", "num_rounds=3", "model=cnn"])
    assert overridden.num_rounds == 3 and overridden.model.name == "cnn"


def test_faults_name_partitions_and_rounds():
    faults = compose(["faults.fail_partitions=[1]", "faults.fail_rounds=[2]"]).faults
    assert faults.fails(1, 2) and not faults.fails(1, 1) and not faults.fails(0, 2)
    assert compose(["faults.fail_partitions=[1]"]).faults.fails(1, 7), "no rounds given: every round"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(num_clients=0), "num_clients=0 is invalid: set num_clients to an integer >= 1"),
        (lambda c: c.update(fraction_train=0.0), r"fraction_train=0.0 is invalid: .* in \(0.0, 1.0\]"),
        (lambda c: c.pop("seed"), "seed is missing: every setting has its default in fl_vmix/conf/"),
        (lambda c: c.update(rounds=3), "unknown setting.*rounds: the valid ones are experiment, seed"),
        (lambda c: c["optimizer"].update(lr=-1), "optimizer.lr must be > 0"),
        (lambda c: c["model"].update(name="transformer"), "unknown model.name 'transformer': choose one of cnn"),
        (lambda c: c["privacy"].update(key="secret"), "privacy.key must not be in the experiment"),
        (
            lambda c: c["privacy"].update(region=4),
            "privacy.region is not a parameter of 'visualmixer': use region_size",
        ),
        (lambda c: c["partition"].update(classes_per_client=2), "unknown setting.*partition.classes_per_client"),
        (lambda c: c["engine"].update(connection="x"), "unknown setting.*engine.connection"),
        (lambda c: c["dataset"].update(root="???"), "dataset.root is required for dataset 'cifar10'"),
        (lambda c: c.update(device="gpu"), "device='gpu' is invalid: use auto, cpu, cuda or cuda:N"),
        (lambda c: c.update(amp="fp8"), "amp='fp8' is invalid: use auto, off, bf16 or fp16"),
        (lambda c: c.update(checkpoint_every=0), "checkpoint_every=0 is invalid: set checkpoint_every to an integer"),
        (lambda c: c["engine"].update(simulation_keys="fixed"), "unknown engine.simulation_keys 'fixed': choose"),
        (lambda c: c["engine"].update(num_gpus_per_client=-1), "engine.num_gpus_per_client=-1 is invalid"),
        (
            lambda c: c["engine"].update(timeout_s=0),
            "engine.timeout_s=0 is invalid: set engine.timeout_s to a number > 0",
        ),
        (
            lambda c: c.update(privacy={"method": "pixel_dp_laplace", "epsilon": 8.0, "run": 3}),
            "privacy.run is not a parameter of 'pixel_dp_laplace': use epsilon",
        ),
        (lambda c: c.update(central_eval="yes"), "central_eval='yes' is invalid: use true or false"),
        (lambda c: c.update(output_dir=5), "output_dir=5 is invalid: give a path or null"),
        (lambda c: c.update(dataset=3), "dataset must be a mapping of settings, got 3"),
        (
            lambda c: c.update(min_success_fraction=1.5),
            r"min_success_fraction=1.5 is invalid: set min_success_fraction to a number in \[0.0, 1.0\]",
        ),
        (
            lambda c: c["faults"].update(fail_partitions="1"),
            r"faults.fail_partitions='1' is invalid: give a list of integers, e.g. \[1\]",
        ),
        (
            lambda c: c["strategy"].update(name="fedadam"),
            "unknown strategy.name 'fedadam': choose one of fedavg, fedprox",
        ),
        (
            lambda c: c["strategy"].update(name="fedavgm", server_momentun=0.9),
            "strategy.server_momentun is not a parameter of 'fedavgm': use server_learning_rate, server_momentum",
        ),
        (
            lambda c: c["strategy"].update(proximal_mu=0.1),
            "strategy.proximal_mu is not a parameter of 'fedavg': use none",
        ),
        (
            lambda c: c["dataset"].update(image_size=4),
            "dataset.image_size=4 is invalid: set dataset.image_size to an integer >= 8",
        ),
        (
            lambda c: c["dataset"].update(augment="mixup"),
            "unknown dataset.augment 'mixup': choose one of none, crop_flip",
        ),
        (
            lambda c: c["optimizer"].update(schedule="step"),
            "unknown optimizer.schedule 'step': choose one of constant, cosine",
        ),
    ],
)
def test_bad_settings_are_named_with_the_fix(change, message):
    raw = compose_config()
    change(raw)
    with pytest.raises(ConfigError, match=message):
        Experiment.from_dict(raw)


def test_runs_recorded_by_earlier_versions_are_read():
    old = compose_config(["partition=pathological"])
    old["partition"]["classes_per_client"] = old["partition"].pop("classes_per_partition")
    del old["engine"]["client_cache"]  # added by this version
    experiment = from_recorded(old)
    assert experiment.partition.classes_per_partition == 2 and experiment.engine.client_cache == 16
    assert from_recorded(compose_config()) == compose(), "a current config is read as it is"


def test_the_probe_catches_what_parsing_cannot(tiny_experiment):
    with pytest.raises(ValueError, match="target_ratio must be >= 1"):
        check_experiment(tiny_experiment("privacy.target_ratio=0.5"))
    check_experiment(tiny_experiment())


@pytest.mark.parametrize(
    "run_config, message",
    [
        ({"experiment": 5}, "run config 'experiment' must be a JSON string: launch with python -m fl_vmix"),
        ({"experiment": "{"}, r"run config 'experiment' is not valid JSON \(.*\): launch with python -m fl_vmix"),
        ({"experiment": "[1]"}, "run config 'experiment' must hold a JSON object, got list"),
        ({"overrides": 3}, "run config 'overrides' must be a string of Hydra overrides: flwr run . --run-config"),
    ],
)
def test_bad_run_configs_are_named_with_the_fix(run_config, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_run_config(run_config)


def test_tensorboard_without_its_package_is_refused_with_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tensorboard=true needs the tensorboard package.*pip install 'fl-vmix\["):
        check_settings(compose(["tensorboard=true"]))
    check_settings(compose(["tensorboard=false"]))


@pytest.mark.parametrize("preset", ["prototype_cifar10", "full_cifar10"])
def test_the_paper_claim_presets_compose_and_their_clear_baseline_differs_only_in_privacy(preset):
    protected, clear = compose([f"preset={preset}"]), compose([f"preset={preset}", "privacy=none"])
    assert clear.privacy.method == "none" and clear.replace(privacy=protected.privacy) == protected
    assert protected.dataset.data_fraction == 1.0 and protected.optimizer.schedule == "cosine"


def test_the_prototype_preset_is_the_authors_protocol():
    e = compose(["preset=prototype_cifar10"])
    assert (e.dataset.image_size, e.model.name, e.batch_size, e.num_rounds) == (224, "resnet50", 128, 90)
    params = dict(e.privacy.params)
    assert params["region_size"] == 16 and params["block_sizes"] == (2,) and params["target_ratio"] is None
    assert params["mode"] == "dynamic" and e.optimizer.lr == 0.1 and e.optimizer.extra["momentum"] == 0.9
