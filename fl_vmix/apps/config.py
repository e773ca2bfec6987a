"""The experiment configuration: composed by Hydra from ``conf/``, carried to the Flower apps as JSON.

``conf/`` is the one source of truth. ``python -m fl_vmix`` composes it with the user's overrides and
passes the resolved tree to ``flwr run`` as the single run-config value ``experiment`` (Flower run
configs are flat and reject unknown keys, so a JSON string keeps every Hydra value overridable).
``flwr run .`` on its own sends an empty ``experiment``; the apps then compose ``conf/`` unchanged,
which is shipped inside the app bundle (FAB) because it is YAML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_CONFIG_KEY = "experiment"


class ConfigError(ValueError):
    """An experiment setting that cannot work; the message names the setting and the fix."""


def conf_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").exists():
        raise ConfigError(
            f"Hydra configuration not found at {path}: run from a checkout or FAB of fl_vmix that includes conf/"
        )
    return path


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose ``conf/`` with Hydra's compose API (outside ``@hydra.main``) into a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def experiment_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The experiment a Flower app was started with (``conf/`` defaults when none was sent)."""
    raw = run_config.get(RUN_CONFIG_KEY, "")
    if not raw:
        return compose_config()
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"run config '{RUN_CONFIG_KEY}' is not valid JSON ({err}): launch with python -m fl_vmix") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"run config '{RUN_CONFIG_KEY}' must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def experiment_to_run_config(cfg: dict[str, Any]) -> dict[str, str]:
    return {RUN_CONFIG_KEY: json.dumps(cfg, sort_keys=True)}
