"""The experiment: one frozen, typed description of a federated run, parsed and checked once.

``fl_vmix/conf/`` (Hydra, shipped inside the package) is the one source of defaults: every field
here is required, and :meth:`Experiment.from_dict` refuses a missing or unknown key with the key's
name and the fix. ``python -m fl_vmix`` composes ``conf/`` with the user's overrides
(:func:`compose`), and the Flower apps receive the resolved experiment as the single run-config
value ``experiment`` (JSON: Flower run configs are flat and reject unknown keys, so one string keeps
every Hydra value overridable); :func:`experiment_from_run_config` parses it once per process.
``flwr run .`` on its own sends an empty ``experiment``; the apps then compose ``conf/`` (with the
run config's ``overrides``, if any).

Adding a setting (say ``device``): add it to ``conf/config.yaml`` (or a group's YAML), add the field
to the dataclass below, and check its value in ``from_dict``. A setting that changes how a run is
executed but not its results (``device``, ``checkpoint_every``, ...) also goes in
:data:`fl_vmix.evaluation.labels.RUN_ONLY`, so reports neither label rows by it nor split seeds over it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fl_vmix.data.transforms import AUGMENTATIONS
from fl_vmix.models import MODELS
from fl_vmix.optim import LR_SCHEDULES, OPTIMIZERS
from fl_vmix.privacy.methods import PRIVACY_METHODS, method_parameters

RUN_CONFIG_KEY = "experiment"
OVERRIDES_KEY = "overrides"  # `flwr run . --run-config "overrides='num_rounds=2'"`: Hydra overrides of conf/
STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm")  # Flower classes: fl_vmix.apps.strategy.STRATEGIES
# The settings of each strategy beyond FedAvg's (which build_strategy sets from the experiment itself).
STRATEGY_PARAMS = {"fedavg": (), "fedprox": ("proximal_mu",), "fedavgm": ("server_learning_rate", "server_momentum")}
ENGINE_NAMES = ("simulation", "deployment")
DEFAULT_REGION_SIZE = 8  # VFE window (and invariant-model region) for methods without regions of their own
SECRET_PARAMS = ("key",)  # a keyed method's secret comes from its node, never from the config
INJECTED_PARAMS = SECRET_PARAMS  # filled in by the client: its key
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SIMULATION_KEYS = ("derived", "random")
# Settings `python -m fl_vmix resume=<run dir>` may change: where and how the rest of the run executes,
# and how many rounds it has. Everything else (amp included: it changes results) continues as recorded.
RESUMABLE = ("num_rounds", "checkpoint_every", "device", "tensorboard", "engine.")


class ConfigError(ValueError):
    """An experiment setting that cannot work; the message names the setting and the fix."""


# --------------------------------------------------------------------------------------------- reading
def _frozen(value: Any) -> Any:
    """Lists become tuples and dicts read-only mappings, so a frozen dataclass is frozen all the way down."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """The inverse of :func:`_frozen`: JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class _Group:
    """Reads one config group (``dataset``, ``privacy``, ...) and names its keys in every error."""

    def __init__(self, raw: Any, prefix: str, known: Sequence[str] | None = None) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{prefix or 'the experiment'} must be a mapping of settings, got {raw!r}")
        self.raw, self.prefix = dict(raw), prefix
        if known is not None:
            unknown = sorted(set(self.raw) - set(known))
            if unknown:
                raise ConfigError(
                    f"unknown setting(s) {', '.join(self._name(k) for k in unknown)}: the valid ones are "
                    f"{', '.join(self._name(k) for k in known)} (fl_vmix/conf/ defines each)"
                )

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str) -> Any:
        if key not in self.raw:
            raise ConfigError(
                f"{self._name(key)} is missing: every setting has its default in fl_vmix/conf/; "
                "compose the experiment with python -m fl_vmix (or fl_vmix.experiment.compose)"
            )
        return self.raw[key]

    def integer(self, key: str, low: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{self._name(key)}={value!r} is invalid: set {self._name(key)} to an integer >= {low}")
        return value

    def number(self, key: str, low: float, high: float | None = None, *, open_low: bool = False) -> float:
        value = self.get(key)
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        if not bad:
            bad = value <= low if open_low else value < low
            bad = bad or (high is not None and value > high)
        if bad:
            bounds = (
                f"{'>' if open_low else '>='} {low}" if high is None else f"in {'(' if open_low else '['}{low}, {high}]"
            )
            raise ConfigError(f"{self._name(key)}={value!r} is invalid: set {self._name(key)} to a number {bounds}")
        return float(value)

    def optional_number(self, key: str, low: float) -> float | None:
        """A number > ``low``, or null (no limit)."""
        if self.get(key) is None:
            return None
        return self.number(key, low, open_low=True)

    def optional_integer(self, key: str, low: int) -> int | None:
        if self.get(key) is None:
            return None
        return self.integer(key, low)

    def text(self, key: str, choices: Sequence[str] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            valid = f"one of {', '.join(choices)}" if choices is not None else "a string"
            raise ConfigError(f"unknown {self._name(key)} {value!r}: choose {valid}")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self._name(key)}={value!r} is invalid: give a path or null")
        return value

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._name(key)}={value!r} is invalid: use true or false")
        return value

    def integers(self, key: str) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise ConfigError(f"{self._name(key)}={value!r} is invalid: give a list of integers, e.g. [1]")
        return tuple(value)


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DatasetSettings:
    name: str
    root: str | None  # None: $FL_VMIX_DATA, then ~/.cache/fl_vmix/data
    cache_dir: str | None  # None: $FL_VMIX_CACHE, then ~/.cache/fl_vmix
    data_fraction: float  # share of each client's partition used (train and local test)
    test_fraction: float  # each client's local test split
    image_size: int | None  # None: the dataset's own size; else clients resize (bilinear) before protecting
    augment: str  # "none" or "crop_flip": clients augment their clear training images every round

    @classmethod
    def parse(cls, raw: Any) -> DatasetSettings:
        g = _Group(raw, "dataset", [f.name for f in fields(cls)])
        root = g.optional_text("root")
        name = g.text("name")
        if root == "???":
            raise ConfigError(f"dataset.root is required for dataset {name!r}: pass dataset.root=/path/to/images")
        return cls(
            name,
            root,
            g.optional_text("cache_dir"),
            g.number("data_fraction", 0.0, 1.0, open_low=True),
            g.number("test_fraction", 0.0, 1.0),
            g.optional_integer("image_size", 8),
            g.text("augment", AUGMENTATIONS),
        )


@dataclass(frozen=True)
class PartitionSettings:
    scheme: str
    alpha: float | None = None  # dirichlet only
    classes_per_partition: int | None = None  # pathological only

    @classmethod
    def parse(cls, raw: Any) -> PartitionSettings:
        g = _Group(raw, "partition", [f.name for f in fields(cls)])
        alpha = g.number("alpha", 0.0, open_low=True) if "alpha" in g.raw else None
        classes = g.integer("classes_per_partition", 1) if "classes_per_partition" in g.raw else None
        return cls(g.text("scheme"), alpha, classes)


@dataclass(frozen=True)
class ModelSettings:
    name: str
    invariant: bool  # prepend the region-sorting, shuffle-invariant input stage

    @classmethod
    def parse(cls, raw: Any) -> ModelSettings:
        g = _Group(raw, "model", [f.name for f in fields(cls)])
        return cls(g.text("name", sorted(MODELS)), g.flag("invariant"))


@dataclass(frozen=True)
class OptimizerSettings:
    name: str
    lr: float
    weight_decay: float
    extra: Mapping[str, float]  # the optimizer's own settings (momentum, agreement_strength, ...)
    schedule: str = "constant"  # the learning rate over rounds: constant, or cosine from lr to 0 over num_rounds

    @classmethod
    def parse(cls, raw: Any) -> OptimizerSettings:
        g = _Group(raw, "optimizer")
        name = g.text("name", OPTIMIZERS)
        value = g.get("lr")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {value!r}")
        own = ("name", "lr", "weight_decay", "schedule")
        extra = {k: g.number(k, 0.0) for k in sorted(g.raw) if k not in own}
        schedule = g.text("schedule", LR_SCHEDULES)
        return cls(name, float(value), g.number("weight_decay", 0.0), MappingProxyType(extra), schedule)


_LITERAL = re.compile(r"^Literal\[(.*)\]$")


def _check_param_type(method: str, name: str, value: Any, annotation: Any) -> None:
    """Refuse a privacy parameter of the wrong type now, naming it and the fix, instead of a TypeError from
    deep inside the method (``block_sizes=2``) or a bare ``int()`` failure (``region_size=eight``).

    Reads the constructor's annotation text (``int``, ``float | None``, ``Sequence[int]``, ``Literal[...]``);
    an annotation it does not know (an alias such as ``VFEMethod``) is left to the method's own checks."""
    text = str(annotation).replace(" ", "")
    optional = text.endswith("|None")
    base = text.removesuffix("|None")
    if value is None:
        if not optional and base in ("int", "float", "bool", "Sequence[int]"):
            raise ConfigError(f"privacy.{name}=null is invalid for {method!r}: give it a value ({base})")
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    literal = _LITERAL.match(base)
    if base == "int":
        ok, want = is_int, f"an integer, e.g. privacy.{name}=8"
    elif base == "float":
        ok, want = is_int or isinstance(value, float), f"a number, e.g. privacy.{name}=3.0"
    elif base == "bool":
        ok, want = isinstance(value, bool), f"true or false, e.g. privacy.{name}=true"
    elif base == "Sequence[int]":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        want = f"a list of integers, e.g. privacy.{name}=[2,1]"
    elif literal is not None:
        choices = [c.strip("'\"") for c in literal.group(1).split(",")]
        ok, want = value in choices, f"one of {', '.join(choices)}"
    else:
        return
    if not ok:
        raise ConfigError(f"privacy.{name}={value!r} is invalid for {method!r}: set privacy.{name} to {want}")


@dataclass(frozen=True)
class PrivacySettings:
    method: str
    params: Mapping[str, Any]  # the method's constructor arguments, without its secret

    @classmethod
    def parse(cls, raw: Any) -> PrivacySettings:
        g = _Group(raw, "privacy")
        method = g.text("method", sorted(PRIVACY_METHODS))
        params = {k: v for k, v in g.raw.items() if k != "method"}
        accepted = method_parameters(method)
        secret = sorted(set(params) & set(SECRET_PARAMS) & set(accepted))
        if secret:
            raise ConfigError(
                f"privacy.{secret[0]} must not be in the experiment: each client's secret comes from its node "
                "(key file or simulation key dir), never from the server's config; remove it"
            )
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            valid = [n for n in accepted if n not in INJECTED_PARAMS]
            raise ConfigError(
                f"privacy.{unknown[0]} is not a parameter of {method!r}: use {', '.join(valid) or 'none'}"
            )
        for name, value in params.items():
            _check_param_type(method, name, value, accepted[name].annotation)
        return cls(method, _frozen(params))

    @property
    def region_size(self) -> int:
        """The method's region side, else ``DEFAULT_REGION_SIZE``: the VFE window, and the invariant model's region."""
        return int(self.params.get("region_size", DEFAULT_REGION_SIZE))

    @property
    def dynamic(self) -> bool:
        """True when the method re-protects each image every round (VisualMixer ``mode``, DP ``noise_mode``)."""
        return self.params.get("mode", self.params.get("noise_mode")) == "dynamic"


@dataclass(frozen=True)
class StrategySettings:
    name: str
    params: Mapping[str, float]  # the strategy's own arguments (proximal_mu, server_momentum, ...)

    @classmethod
    def parse(cls, raw: Any) -> StrategySettings:
        g = _Group(raw, "strategy")
        name = g.text("name", STRATEGY_NAMES)
        valid = STRATEGY_PARAMS[name]
        unknown = sorted(set(g.raw) - {"name", *valid})
        if unknown:
            raise ConfigError(f"strategy.{unknown[0]} is not a parameter of {name!r}: use {', '.join(valid) or 'none'}")
        return cls(name, MappingProxyType({k: g.number(k, 0.0) for k in sorted(g.raw) if k != "name"}))


_ENGINE_KEYS = {
    "simulation": (
        "name",
        "timeout_s",
        "client_cache",
        "threads_per_client",
        "num_cpus_per_client",
        "num_gpus_per_client",
        "simulation_keys",
    ),
    "deployment": (
        "name",
        "timeout_s",
        "client_cache",
        "threads_per_client",
        "connection",
        "connect_timeout_s",
        "wait_nodes_s",
        "round_timeout_s",
    ),
}


@dataclass(frozen=True)
class EngineSettings:
    name: str
    timeout_s: float | None  # the launcher stops the run (and its processes) after this; None: no limit
    client_cache: int  # clients whose protected data one ClientApp process keeps (LRU)
    threads_per_client: int | None = None  # torch threads of a ClientApp (and the ServerApp); None: torch's default
    num_cpus_per_client: int | None = None  # simulation: Ray CPUs reserved per client
    num_gpus_per_client: float | None = None  # simulation: Ray GPU share per client (0.5: two clients per GPU)
    simulation_keys: str | None = None  # simulation: "derived" (from the public seed) or "random" (key files)
    connection: str | None = None  # deployment: a SuperLink connection in $FLWR_HOME/config.toml
    connect_timeout_s: float | None = None  # deployment: probe of the SuperLink before flwr run
    wait_nodes_s: float | None = None  # deployment: wait this long for num_clients SuperNodes
    # deployment: how long a round waits for replies; a missing one then counts as a client failure. Flower cannot
    # tell that a SuperNode which crashed and came back within seconds lost the message it had pulled.
    round_timeout_s: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> EngineSettings:
        name = _Group(raw, "engine").text("name", ENGINE_NAMES)
        g = _Group(raw, "engine", _ENGINE_KEYS[name])
        timeout_s, client_cache = g.optional_number("timeout_s", 0.0), g.integer("client_cache", 1)
        threads = g.optional_integer("threads_per_client", 1)
        if name == "simulation":
            return cls(
                name,
                timeout_s,
                client_cache,
                threads,
                num_cpus_per_client=g.integer("num_cpus_per_client", 1),
                num_gpus_per_client=g.number("num_gpus_per_client", 0.0),
                simulation_keys=g.text("simulation_keys", SIMULATION_KEYS),
            )
        return cls(
            name,
            timeout_s,
            client_cache,
            threads,
            connection=g.text("connection"),
            connect_timeout_s=g.number("connect_timeout_s", 0.0, open_low=True),
            wait_nodes_s=g.number("wait_nodes_s", 0.0),
            round_timeout_s=g.optional_number("round_timeout_s", 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """The engine's own keys (a null ``timeout_s`` included), in the layout of ``conf/engine/``."""
        return {key: getattr(self, key) for key in _ENGINE_KEYS[self.name]}


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection for testing failure tolerance: these partitions raise in train."""

    fail_partitions: tuple[int, ...]
    fail_rounds: tuple[int, ...]  # () = every round

    @classmethod
    def parse(cls, raw: Any) -> FaultSettings:
        g = _Group(raw, "faults", [f.name for f in fields(cls)])
        return cls(g.integers("fail_partitions"), g.integers("fail_rounds"))

    def fails(self, partition_id: int, server_round: int) -> bool:
        return partition_id in self.fail_partitions and (not self.fail_rounds or server_round in self.fail_rounds)


def _device(g: _Group) -> str:
    value = g.get("device")
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        raise ConfigError(f"device={value!r} is invalid: use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return value


def _amp(g: _Group) -> str:
    value = g.get("amp")
    if value is False:  # YAML and Hydra read a bare `off` as false
        return "off"
    if value not in AMP_MODES:
        raise ConfigError(f"amp={value!r} is invalid: use auto, off, bf16 or fp16 (fp16 needs a CUDA device)")
    return str(value)


# ----------------------------------------------------------------------------------------- experiment
@dataclass(frozen=True)
class Experiment:
    experiment: str  # name used in output folders and reports
    seed: int
    num_clients: int
    num_rounds: int
    local_epochs: int
    batch_size: int
    fraction_train: float
    fraction_evaluate: float
    min_success_fraction: float
    central_eval: bool
    output_dir: str | None
    device: str  # auto (CUDA when the process sees a GPU, else CPU), cpu, cuda, cuda:N
    amp: str  # mixed precision of training and evaluation: auto, off, bf16, fp16 (fp16: CUDA only)
    checkpoint_every: int  # save a resumable checkpoint every this many rounds (and after the last)
    resume: str | None  # a run folder to continue from its checkpoint (python -m fl_vmix resume=<dir>)
    tensorboard: bool  # also log every round's metrics to <run>/tensorboard (pip install 'fl-vmix[tensorboard]')
    # DP noise (central DP's, DP-SGD's noise and sampling) reproducible from the seed (and the client's key) instead
    # of drawn from OS entropy: reruns match, but the DP guarantee no longer holds against anyone who knows the seed.
    reproducible_noise: bool
    dataset: DatasetSettings
    partition: PartitionSettings
    model: ModelSettings
    optimizer: OptimizerSettings
    privacy: PrivacySettings
    strategy: StrategySettings
    engine: EngineSettings
    faults: FaultSettings

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Experiment:
        """Parse and check a resolved config (Hydra's composed tree, or a run's ``config.json``)."""
        g = _Group(raw, "", [f.name for f in fields(cls)])
        for key in ("dataset", "partition", "model", "optimizer", "privacy", "strategy", "engine", "faults"):
            g.get(key)
        return cls(
            experiment=g.text("experiment"),
            seed=g.integer("seed", 0),
            num_clients=g.integer("num_clients", 1),
            num_rounds=g.integer("num_rounds", 1),
            local_epochs=g.integer("local_epochs", 1),
            batch_size=g.integer("batch_size", 1),
            fraction_train=g.number("fraction_train", 0.0, 1.0, open_low=True),
            fraction_evaluate=g.number("fraction_evaluate", 0.0, 1.0),
            min_success_fraction=g.number("min_success_fraction", 0.0, 1.0),
            central_eval=g.flag("central_eval"),
            output_dir=g.optional_text("output_dir"),
            device=_device(g),
            amp=_amp(g),
            checkpoint_every=g.integer("checkpoint_every", 1),
            resume=g.optional_text("resume"),
            tensorboard=g.flag("tensorboard"),
            reproducible_noise=g.flag("reproducible_noise"),
            dataset=DatasetSettings.parse(raw["dataset"]),
            partition=PartitionSettings.parse(raw["partition"]),
            model=ModelSettings.parse(raw["model"]),
            optimizer=OptimizerSettings.parse(raw["optimizer"]),
            privacy=PrivacySettings.parse(raw["privacy"]),
            strategy=StrategySettings.parse(raw["strategy"]),
            engine=EngineSettings.parse(raw["engine"]),
            faults=FaultSettings.parse(raw["faults"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config tree again (the layout of ``conf/`` and of every run's ``config.json``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (PrivacySettings,)):
                out[f.name] = {"method": value.method, **_plain(value.params)}
            elif isinstance(value, StrategySettings):
                out[f.name] = {"name": value.name, **dict(value.params)}
            elif isinstance(value, OptimizerSettings):
                out[f.name] = {
                    "name": value.name,
                    "lr": value.lr,
                    "weight_decay": value.weight_decay,
                    "schedule": value.schedule,
                    **dict(value.extra),
                }
            elif isinstance(value, EngineSettings):
                out[f.name] = value.to_dict()
            elif isinstance(value, PartitionSettings):
                out[f.name] = {
                    k.name: _plain(getattr(value, k.name)) for k in fields(value) if getattr(value, k.name) is not None
                }
            elif isinstance(value, (DatasetSettings, ModelSettings, FaultSettings)):
                out[f.name] = {k.name: _plain(getattr(value, k.name)) for k in fields(value)}
            else:
                out[f.name] = value
        return out

    def replace(self, **changes: Any) -> Experiment:
        return replace(self, **changes)


# ----------------------------------------------------------------------------------- Hydra, run config
def conf_dir() -> Path:
    """``fl_vmix/conf`` inside the installed package (a wheel ships it as package data)."""
    path = Path(__file__).resolve().with_name("conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"Hydra configuration not found at {path}: reinstall fl_vmix (its wheel ships fl_vmix/conf)")
    return path


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``conf/`` with Hydra's compose API (outside ``@hydra.main``) into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def compose(overrides: Sequence[str] = ()) -> Experiment:
    """The experiment of ``conf/`` with Hydra overrides (``["privacy=none", "num_rounds=2"]``)."""
    return Experiment.from_dict(compose_config(overrides))


# Settings renamed since earlier fl_vmix versions wrote their runs' config.json: old dotted name -> new.
RENAMED = {"partition.classes_per_client": "partition.classes_per_partition"}
# The config group whose option each group's YAML file is named after (conf/<group>/<option>.yaml).
_GROUP_OPTION = {
    "dataset": "name",
    "partition": "scheme",
    "model": "name",
    "optimizer": "name",
    "privacy": "method",
    "strategy": "name",
    "engine": "name",
}


def from_recorded(raw: Mapping[str, Any]) -> Experiment:
    """The experiment of a finished run's ``config.json``, also one written by an earlier fl_vmix.

    Settings renamed since are renamed (:data:`RENAMED`); settings added since are taken from
    ``conf/`` for the run's own choices (its engine, privacy method, ...), so reports and attacks
    can read old runs. Values the run recorded are never changed.
    """
    cfg = json.loads(json.dumps(dict(raw)))  # a deep copy
    for old, new in RENAMED.items():
        group, old_key = old.split(".")
        new_key = new.split(".")[1]
        if isinstance(cfg.get(group), dict) and old_key in cfg[group]:
            cfg[group][new_key] = cfg[group].pop(old_key)
    choices = [
        f"{g}={cfg[g][k]}"
        for g, k in _GROUP_OPTION.items()
        if isinstance(cfg.get(g), dict)
        and isinstance(cfg[g].get(k), str)
        and (conf_dir() / g / f"{cfg[g][k]}.yaml").is_file()
    ]
    defaults = compose_config(choices)

    def fill(into: dict[str, Any], source: Mapping[str, Any]) -> None:
        for key, value in source.items():
            if key not in into:
                into[key] = value
            elif isinstance(into[key], dict) and isinstance(value, Mapping):
                fill(into[key], value)

    fill(cfg, defaults)
    return Experiment.from_dict(cfg)


def to_run_config(experiment: Experiment) -> dict[str, str]:
    return {RUN_CONFIG_KEY: json.dumps(experiment.to_dict(), sort_keys=True)}


def experiment_from_run_config(run_config: Mapping[str, Any]) -> Experiment:
    """The experiment a Flower app was started with, parsed once per value: the JSON ``experiment`` that
    ``python -m fl_vmix`` sends, else ``conf/`` composed with the run config's ``overrides`` (``flwr run .``)."""
    raw = run_config.get(RUN_CONFIG_KEY, "")
    overrides = run_config.get(OVERRIDES_KEY, "")
    if not isinstance(raw, str):
        raise ConfigError(f"run config '{RUN_CONFIG_KEY}' must be a JSON string: launch with python -m fl_vmix")
    if not isinstance(overrides, str):
        raise ConfigError(
            f"run config '{OVERRIDES_KEY}' must be a string of Hydra overrides: "
            "flwr run . --run-config \"overrides='num_rounds=2 dataset.data_fraction=0.05'\""
        )
    if raw and overrides.strip():
        raise ConfigError(
            f"the run config holds both '{RUN_CONFIG_KEY}' and '{OVERRIDES_KEY}': give one (python -m fl_vmix sends "
            "the whole experiment; flwr run . takes overrides)"
        )
    if raw:
        return _parse_run_config(raw)
    return _compose_overrides(overrides.strip())


@lru_cache(maxsize=8)
def _compose_overrides(overrides: str) -> Experiment:
    try:
        return compose(shlex.split(overrides))
    except ConfigError:
        raise
    except Exception as err:  # Hydra's own errors: an unknown option or a malformed override
        raise ConfigError(f"run config '{OVERRIDES_KEY}={overrides}': {err}") from err


@lru_cache(maxsize=8)
def _parse_run_config(raw: str) -> Experiment:
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"run config '{RUN_CONFIG_KEY}' is not valid JSON ({err}): launch with python -m fl_vmix"
        ) from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"run config '{RUN_CONFIG_KEY}' must hold a JSON object, got {type(cfg).__name__}")
    return Experiment.from_dict(cfg)
