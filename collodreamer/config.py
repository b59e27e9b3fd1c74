"""Configuration machinery: YAML presets, ``key=value`` overrides, validation, saving and loading.

A config is a tree of the dataclasses in :mod:`collodreamer.schema`. Presets are YAML files (in
``configs/``) holding a partial tree; they layer in order, then ``section.key=value`` overrides apply
on top. Any unknown key or value of the wrong type raises :class:`ConfigError` with a one-line message
naming the key and the choices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from collodreamer.files import write_atomic
from collodreamer.schema import Config, EnvConfig
from collodreamer.seeds import MAX_SEED

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config key, value or preset that cannot be used; the message is one line."""


# The settings a resumed run may change (``--resume RUN_DIR key=value``): how long, how fast and on
# what it trains, and what it logs. Every other setting is the run's identity (agent, task, obs,
# action repeat, model shapes, ...), which its checkpoint holds (the README's "Resuming a run").
RESUMABLE = frozenset(
    {
        "device",
        "run.steps",
        "run.train_every",
        "run.train_steps",
        "run.eval_start",
        "run.eval_every",
        "run.eval_episodes",
        "run.checkpoint_every",
        "run.log_every",
        "run.max_nonfinite",
        "run.max_weight_growth",
        "run.video",
        "run.video_size",
        "run.report",
        "run.keep_checkpoints",
        "run.wandb",
        "run.wandb_project",
        "run.threads",
        "model.lr",
        "model.grad_clip",
        "actor.lr",
        "actor.grad_clip",
        "value.lr",
        "value.grad_clip",
        "policy.lr",
        "policy.grad_clip",
        "pessimism.lr",
    }
)


def preset_dir() -> Path:
    """The folder of YAML presets shipped with the package (``configs/`` in the repository)."""
    return Path(str(resources.files("collodreamer"))) / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """Read a preset by name (from ``configs/``) or by path to a YAML file."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        path = preset_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset '{name}'; choices: {', '.join(available_presets())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"preset {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of config keys")
    return data


def load_spec_file(name: str, folder: str, keys: set[str], what: str) -> dict[str, Any]:
    """A spec (a sweep's, a screen's) by path, or by name from ``configs/<folder>/``, whose top-level
    keys are all among ``keys``; ``what`` names it in errors."""
    spec = load_preset(name if Path(name).exists() else f"{folder}/{name}")
    unknown = set(spec) - keys
    if unknown:
        raise ConfigError(f"{what}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(keys))}")
    return spec


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to the type ``hint`` or raise a one-line ConfigError."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{key}: {value!r} is not a valid choice; choices: {', '.join(map(str, choices))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is type(None):
                continue
            try:
                return _check_value(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not fit type {hint}")
    if origin in (tuple, list):
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "6e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint}")


def _merge(node: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``node`` with the nested mapping ``data`` applied."""
    hints = typing.get_type_hints(type(node))
    names = [f.name for f in dataclasses.fields(node)]
    changes = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'; valid keys: {', '.join(names)}")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: is a section; set its keys, e.g. {path}.{names[0]}=...")
            changes[key] = _merge(current, value, f"{path}.")
        else:
            changes[key] = _check_value(path, value, hints[key])
    return dataclasses.replace(node, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"model.deter=300"`` into ``{"model": {"deter": 300}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. run.steps=10000")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


def _layer(
    config: Config, presets: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...]
) -> Config:
    for name in presets:
        config = _merge(config, _renamed(load_preset(name)))  # a saved config.yaml may be a preset
    for text in overrides:
        config = _merge(config, parse_override(text))
    return config


def make_config(
    presets: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    base: Config | None = None,
) -> Config:
    """Layer presets, then overrides, on ``base`` and validate.

    Without ``base`` the layers are: the defaults (:mod:`collodreamer.schema`), then the chosen agent's
    own defaults (``configs/agents/<agent>.yaml`` where it exists, e.g. ColloDreamer's categorical
    latents), then the presets in order, then the overrides."""
    if base is not None:
        config = _layer(base, presets, overrides)
    else:
        config = _layer(Config(), presets, overrides)
        agent_defaults = preset_dir() / "agents" / f"{config.agent}.yaml"
        if agent_defaults.exists():
            config = _layer(_merge(Config(), load_preset(str(agent_defaults))), presets, overrides)
    validate(config)
    return config


def config_sources(
    presets: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, str]:
    """Where each key's value comes from under :func:`make_config`'s layering: ``default``, ``agent
    defaults``, ``preset NAME`` or ``override`` (the last layer that sets the key)."""
    config = make_config(presets, overrides)
    sources = dict.fromkeys(flatten(to_dict(config)), "default")
    agent_defaults = preset_dir() / "agents" / f"{config.agent}.yaml"
    layers = [("agent defaults", load_preset(str(agent_defaults)))] if agent_defaults.exists() else []
    layers += [(f"preset {name}", _renamed(load_preset(name))) for name in presets]
    layers += [("override", parse_override(text)) for text in overrides]
    for source, data in layers:
        for key in flatten(data):
            sources[key] = source
    return sources


def field_help(section: type = Config, prefix: str = "") -> dict[str, tuple[str, str]]:
    """``{"section.key": (type, help)}`` for every setting: its type as annotated and the help declared
    with it (:func:`collodreamer.schema.setting`), the settings' one documentation."""
    described: dict[str, tuple[str, str]] = {}
    for item in dataclasses.fields(section):
        if dataclasses.is_dataclass(item.default_factory):
            described.update(field_help(item.default_factory, f"{prefix}{item.name}."))
        else:
            described[prefix + item.name] = (str(item.type), item.metadata["help"])
    return described


def uses_pixels(env: EnvConfig) -> bool:
    """Whether the agent sees images rather than the state vector; what holds an environment's
    :class:`~collodreamer.spec.EnvSpec` asks its ``pixels``."""
    return env.obs == "pixels"


def cloned_policy(config: Config) -> bool:
    """Whether a planning agent clones its plans into an amortised policy (beyond the paper) that
    warm-starts plans or competes with them: where no actor of the imagination style does it."""
    planner = config.planner
    uses_policy = planner.init == "policy" or "policy" in planner.candidates
    return uses_policy and not imagination_actor(config)


def imagination_actor(config: Config) -> bool:
    """Whether ColloDreamer learns Dreamer's actor beside its planner (``value.style=imagination``)."""
    return config.agent == "collodreamer" and config.value.style == "imagination"


def validate(config: Config) -> None:
    """Checks that involve more than one key or a range; types are checked on assignment."""
    positive = {
        "run.steps": config.run.steps,
        "run.max_nonfinite": config.run.max_nonfinite,
        "run.max_weight_growth": config.run.max_weight_growth,
        "model.lr": config.model.lr,
        "actor.lr": config.actor.lr,
        "value.lr": config.value.lr,
        "policy.lr": config.policy.lr,
        "planner.adam_lr": config.planner.adam_lr,
        "planner.damping": config.planner.damping,
        "model.grad_clip": config.model.grad_clip,
        "actor.grad_clip": config.actor.grad_clip,
        "value.grad_clip": config.value.grad_clip,
        "env.action_repeat": config.env.action_repeat,
        "env.time_limit": config.env.time_limit,
        "replay.batch_size": config.replay.batch_size,
        "replay.batch_length": config.replay.batch_length,
        "replay.capacity": config.replay.capacity,
        "run.train_every": config.run.train_every,
        "run.eval_every": config.run.eval_every,
        "run.eval_episodes": config.run.eval_episodes,
        "run.checkpoint_every": config.run.checkpoint_every,
        "run.log_every": config.run.log_every,
        "model.deter": config.model.deter,
        "model.stoch": config.model.stoch,
        "model.classes": config.model.classes,
        "model.hidden": config.model.hidden,
        "model.units": config.model.units,
        "model.layers": config.model.layers,
        "model.cnn_depth": config.model.cnn_depth,
        "actor.units": config.actor.units,
        "actor.layers": config.actor.layers,
        "value.layers": config.value.layers,
        "policy.units": config.policy.units,
        "policy.layers": config.policy.layers,
        "value.units": config.value.units,
        "value.target_period": config.value.target_period,
        "value.update_every": config.value.update_every,
        "value.plan_batch": config.value.plan_batch,
        "actor.horizon": config.actor.horizon,
        "planner.horizon": config.planner.horizon,
        "planner.iterations": config.planner.iterations,
        "planner.replan_every": config.planner.replan_every,
        "planner.plans": config.planner.plans,
        "value.heads": config.value.heads,
        "pessimism.units": config.pessimism.units,
        "pessimism.layers": config.pessimism.layers,
        "pessimism.lr": config.pessimism.lr,
        "latent_objective.target_period": config.latent_objective.target_period,
    }
    for key, value in positive.items():
        if not 0 < value < math.inf:
            raise ConfigError(f"{key} must be positive, got {value}")
    if config.run.threads < 0:
        raise ConfigError(f"run.threads must be 0 (one per core) or positive, got {config.run.threads}")
    for key, value in {
        "run.keep_checkpoints": config.run.keep_checkpoints,
        "run.prefill": config.run.prefill,
        "run.train_steps": config.run.train_steps,
        "run.eval_start": config.run.eval_start,
        "pessimism.reward_heads": config.pessimism.reward_heads,
        "pessimism.reward_kappa": config.pessimism.reward_kappa,
        "pessimism.state_heads": config.pessimism.state_heads,
        "pessimism.state_kappa": config.pessimism.state_kappa,
        "value.kappa": config.value.kappa,
        "planner.trust_weight": config.planner.trust_weight,
        "planner.feedback": config.planner.feedback,
        "planner.candidate_margin": config.planner.candidate_margin,
        "planner.score_samples": config.planner.score_samples,
        "planner.calibration_rate": config.planner.calibration_rate,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} cannot be negative, got {value}")
    if not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    if not 0 < config.value.gamma <= 1:
        raise ConfigError(f"value.gamma must be in (0, 1], got {config.value.gamma}")
    if config.planner.calibration_rate > 1:
        raise ConfigError(
            f"planner.calibration_rate must be in [0, 1], got {config.planner.calibration_rate}"
        )
    if not 0 <= config.value.lam <= 1:
        raise ConfigError(f"value.lam must be in [0, 1], got {config.value.lam}")
    if config.planner.replan_every > config.planner.horizon:
        raise ConfigError(
            f"planner.replan_every ({config.planner.replan_every}) cannot exceed planner.horizon "
            f"({config.planner.horizon}): a plan holds only that many actions"
        )
    if config.value.dropout and len(config.value.dropout) != config.value.layers:
        raise ConfigError(
            f"value.dropout needs one probability per hidden layer ({config.value.layers}), "
            f"got {len(config.value.dropout)}"
        )
    for index, probability in enumerate(config.value.dropout):
        if not 0 <= probability < 1:
            raise ConfigError(f"value.dropout[{index}] must be in [0, 1), got {probability}")
    if config.value.clip_low >= config.value.clip_high:
        raise ConfigError(
            f"value.clip_low ({config.value.clip_low}) must be below value.clip_high "
            f"({config.value.clip_high})"
        )
    if config.env.action_repeat > config.env.time_limit:
        raise ConfigError(
            f"env.action_repeat ({config.env.action_repeat}) cannot exceed env.time_limit "
            f"({config.env.time_limit}): an episode would end within one agent step"
        )
    for key in ("reward_heads", "state_heads"):
        if getattr(config.pessimism, key) == 1:
            raise ConfigError(f"pessimism.{key}: the std of one head is zero; use 0 (off) or 2 or more")
    if config.planner.train_acting == "actor" and not imagination_actor(config):
        raise ConfigError(
            "planner.train_acting=actor needs an actor: agent collodreamer, value.style=imagination"
        )
    if config.planner.feedback and config.agent == "dreamer":
        raise ConfigError("planner.feedback acts on plans: Dreamer acts with its actor alone; set it to 0")
    if config.planner.feedback and not (cloned_policy(config) or imagination_actor(config)):
        raise ConfigError(
            "planner.feedback needs a policy: planner.init=policy, planner.candidates=[policy] or "
            "value.style=imagination (agent collodreamer)"
        )
    if config.planner.trust_weight > 0 and config.planner.init == "random":
        raise ConfigError(
            "planner.trust_weight needs actions to hold the plan near: planner.init=policy or shift"
        )


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-friendly data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(v) for v in data]
    return data


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from :func:`to_dict` output (of today's code or an older one), validating
    every key."""
    config = _merge(Config(), _renamed(data))
    validate(config)
    return config


def save_config(config: Config, path: Path) -> None:
    text = yaml.safe_dump(to_dict(config), sort_keys=False).encode()
    write_atomic(path, lambda handle: handle.write(text))


def load_config(path: Path) -> Config:
    """Read a saved config; keys it lacks (added to the code after it was saved) take today's defaults,
    with a warning naming them, since a resumed run then no longer runs quite as it started."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} is empty or not a mapping of sections; it is damaged")
    data = _renamed(data)
    config = from_dict(data)
    saved = flatten(data)
    missing = [(key, value) for key, value in flatten(to_dict(config)).items() if key not in saved]
    if missing:
        values = ", ".join(f"{key}={value}" for key, value in missing)
        log.warning("%s predates these settings, which take defaults: %s", path, values)
    return config


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config (or a preset) in today's names. ``env.image_size`` is gone: images are always
    :data:`~collodreamer.spec.IMAGE_SIZE` pixels per side, the one size it allowed for pixels (a state
    run never used it). ``model.amp`` (bfloat16 autocast on CUDA) became ``model.precision``: a pixel
    run resumes in the format it trained in; a state run, which the setting does not touch, takes
    today's default, so it still matches a new run of its settings."""
    env = data.get("env")
    if isinstance(env, dict) and "image_size" in env:
        data = {**data, "env": {key: value for key, value in env.items() if key != "image_size"}}
    model = data.get("model")
    if not isinstance(model, dict) or "amp" not in model:
        return data
    model = dict(model)
    amp = model.pop("amp")
    env = data.get("env")
    if (env.get("obs", EnvConfig.obs) if isinstance(env, dict) else EnvConfig.obs) == "pixels":
        model["precision"] = "bfloat16" if amp else "float32"
    return {**data, "model": model}


def run_name(config: Config, variant: str = "", stamp: str = "") -> str:
    """A run directory's name, ``[<variant>-]<agent>-<task>-<obs>-s<seed>[-<stamp>]``, the task
    without its suite prefix (``dmc:``, ``gym:``)."""
    task = config.env.task.split(":", 1)[-1]
    parts = (variant, config.agent, task, config.env.obs, f"s{config.seed}", stamp)
    return "-".join(part for part in parts if part)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for each setting of nested config dicts that differs."""
    before = flatten(old)
    return [
        f"{key}: {before[key]} -> {value}"
        for key, value in flatten(new).items()
        if key in before and before[key] != value
    ]


def check_resumable(saved: dict[str, Any], config: Config) -> None:
    """A one-line :class:`ConfigError` naming the first setting outside :data:`RESUMABLE` in which
    ``config`` differs from ``saved``, the nested config dict a run was checkpointed with."""
    before = flatten(saved)
    for key, value in flatten(to_dict(config)).items():
        if key in before and key not in RESUMABLE and before[key] != value:
            raise ConfigError(
                f"{key} cannot change on resume ({before[key]} -> {value}): it is part of the run's "
                "identity; start a new run for it (what may change: the README's 'Resuming a run')"
            )
