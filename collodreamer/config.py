"""Typed configuration: every default in one place, YAML presets, ``key=value`` overrides.

A config is a tree of dataclasses. Presets are YAML files (in ``configs/``) holding a partial tree;
they layer in order, then ``section.key=value`` overrides apply on top. Any unknown key or value of
the wrong type raises :class:`ConfigError` with a one-line message naming the key and the choices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from collodreamer.files import write_atomic
from collodreamer.seeds import MAX_SEED

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config key, value or preset that cannot be used; the message is one line."""


@dataclass
class EnvConfig:
    """The environment: a DeepMind Control (or Gymnasium) task seen as pixels or as its state vector."""

    task: str = "dmc:reacher_easy"  # "dmc:<domain>_<task>" (see `collodreamer tasks`) or "gym:<id>"
    obs: Literal["pixels", "state"] = "pixels"  # 64x64 RGB images, or the task's state vector
    action_repeat: int = 2  # env frames per agent step; rewards are summed over them
    time_limit: int = 1000  # episode length in env frames
    image_size: int = 64  # pixels per side (the CNN takes 64)
    camera: int = -1  # dm_control camera; -1: Dreamer's choice (2 for quadruped, 0 otherwise)
    fast_render: bool = True  # dm_control: offsamples=0, shadowsize=256: ~4x faster software rendering


@dataclass
class ReplayConfig:
    """The on-disk episode store and its sequence sampler."""

    capacity: int = 1_000_000  # env frames kept in memory; oldest episodes leave first
    batch_size: int = 50  # sequences per training batch
    batch_length: int = 50  # agent steps per sequence


@dataclass
class RunConfig:
    """The training loop's schedule. Every count is in env frames (action repeat included)."""

    steps: int = 1_000_000  # env frames to train for
    prefill: int = 5000  # random-action env frames before the first gradient step
    train_every: int = 1000  # env frames collected between training phases
    train_steps: int = 100  # gradient steps per training phase
    eval_start: int = 0  # first test at this many env frames, then every eval_every
    eval_every: int = 10_000  # env frames between tests
    eval_episodes: int = 5  # episodes per test
    checkpoint_every: int = 10_000  # checkpoints are written at the next episode end
    log_every: int = 1000  # env frames between metrics records
    # Updates (or plans) of one network in a row that may go non-finite, each skipped, before the run
    # stops with an error naming it; its last finite checkpoint stays on disk.
    max_nonfinite: int = 100
    # A network whose weight norm grows past this many times its level at the start (of the run, or of
    # a resume) has blown up though finite (a learning rate far too large): the run stops the same way.
    max_weight_growth: float = 1000.0
    video: bool = False  # save the first test episode of each evaluation as mp4
    video_size: int = 128  # pixels per side of test videos
    # At each test, also write the report's pictures to TensorBoard: the world model's open-loop
    # prediction of the latest episode and, for planning agents, one plan traced from a test start.
    report: bool = False
    keep_checkpoints: int = 0  # keep the checkpoints of the last N tests in checkpoints/ (0: none)
    wandb: bool = False  # also track the run in Weights & Biases (pip install 'collodreamer[wandb]')
    wandb_project: str = "collodreamer"  # the W&B project of tracked runs
    # torch's threads for this run (0: torch's default, one per core). One degrades gracefully beside
    # other processes; more threads than free cores wait on each other (0.45 s against 15.9 s per plan
    # beside two busy runs: results/benchmarks/after/planning_threads*_beside_two_runs.json).
    threads: int = 1


@dataclass
class ModelConfig:
    """The world model: encoder, RSSM, decoder and reward head, trained by Eq. 4 (DreamerV1 defaults)."""

    latent: Literal["gaussian", "categorical"] = "gaussian"  # stochastic latent: DreamerV1 or DreamerV2
    deter: int = 200  # GRU state size (the paper's "latent vector length")
    stoch: int = 30  # Gaussian dimensions, or number of categorical variables
    classes: int = 32  # classes per categorical variable
    hidden: int = 200  # RSSM hidden layers
    units: int = 400  # width of the MLP encoder (states), decoder (states) and reward head
    layers: int = 2  # hidden layers of those MLPs
    cnn_depth: int = 32  # channels of the first conv layer (pixels)
    min_std: float = 0.1  # Gaussian latents: lower bound of the std
    unimix: float = 0.0  # categorical latents: mix of the uniform distribution into the probabilities
    gru_norm: bool = False  # layer norm inside the GRU (DreamerV2)
    kl_balancing: bool = False  # Listing 1; off is DreamerV1's plain KL(post || prior)
    kl_balance: float = 0.8  # alpha of Listing 1
    free_nats: float = 3.0  # KL below this many nats is not penalised
    kl_scale: float = 1.0  # beta of Eq. 4
    lr: float = 6e-4  # Adam learning rate
    grad_clip: float = 100.0  # gradient norm clip
    # Number format of the conv encoder and decoder (pixels; state runs are always float32): bfloat16
    # autocast there, the RSSM, KL, losses, behaviour and planner in float32. On this CPU (AVX512-BF16) a
    # pixels_cpu world-model update costs 690 ms instead of 924 in float32 (results/benchmarks/precision/).
    # auto: bfloat16 where the device computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU
    # that supports it), else float32
    precision: Literal["float32", "bfloat16", "auto"] = "auto"


@dataclass
class ActorConfig:
    """Dreamer's actor: a tanh-Gaussian policy trained through imagined trajectories."""

    horizon: int = 15  # imagination horizon in agent steps
    starts: int = 0  # imagine from this many random posterior states of the batch (0: all of them)
    lr: float = 8e-5  # Adam learning rate
    units: int = 400  # hidden units per layer
    layers: int = 4  # hidden layers
    init_std: float = 5.0  # initial std of the pre-tanh Gaussian
    min_std: float = 1e-4  # lower bound of that std
    mean_scale: float = 5.0  # the pre-tanh mean is mean_scale * tanh(mean / mean_scale)
    # Weight of the policy's entropy in the actor loss (DreamerV1: none, 0). Without it the actor's
    # actions saturated at +-1 on reacher from states; results/README.md (Learning) derives 0.03.
    entropy: float = 0.03
    grad_clip: float = 100.0  # gradient norm clip


@dataclass
class ValueConfig:
    """The value V(z) and its slow target copy V'."""

    gamma: float = 0.99  # discount per agent step (Eq. 10)
    lam: float = 0.95  # lambda of the TD(lambda) targets (Dreamer's, and the replay style's)
    lr: float = 8e-5  # Adam learning rate
    units: int = 400  # hidden units per layer
    layers: int = 3  # hidden layers
    grad_clip: float = 100.0  # gradient norm clip
    target_period: int = 100  # update V' after every this many value updates ...
    target_tau: float = 1.0  # ... by V' <- tau * V + (1 - tau) * V'
    # Regularisers of Fig. 1 (each a switch), and layer norm, which needs no batch statistics:
    norm: Literal["none", "before", "after", "layer"] = "none"  # before/after: batch norm around ELU
    dropout: list[float] = field(default_factory=list)  # drop probability per hidden layer ([] = none)
    clip: bool = False  # clip V to [clip_low, clip_high]
    clip_low: float = 0.0  # lower bound of the clip
    clip_high: float = 200.0  # upper bound of the clip
    # hard: the paper's clamp, no gradient outside the range; straight_through: clamped forward,
    # the network's own gradient backward, so the planner can still climb V where it is clipped
    clip_mode: Literal["hard", "straight_through"] = "hard"
    # ColloDreamer: how V learns. inner: from the plan after every planner iteration (Algorithm 1);
    # after: from the executed segment's posterior states (Fig. 2); replay: TD(lambda) targets of real
    # rewards on replayed posterior sequences, in every training step; imagination: Dreamer's critic
    # on imagined rollouts of its actor, which also warm-starts plans (planner.init=policy).
    style: Literal["inner", "after", "replay", "imagination"] = "inner"
    after_updates: int = 100  # value updates per executed segment in the "after" style
    update_every: int = 1  # inner style: planner iterations between value updates
    # inner/after styles: plans (or segments) per value update, the current one and the latest others;
    # more than one gives batch norm statistics across plans rather than along one plan
    plan_batch: int = 1
    weight: float = 1.0  # scales the planner's terminal value term (Eq. 10's gamma^(H+1) V)
    # Pessimism (beyond the paper): V is the mean minus kappa times the std over this many value heads,
    # each trained on the same targets, which come from that estimate of V'; with 2 heads and kappa 1
    # it is their minimum (TD-MPC2's). 1: one value network, as in the paper.
    heads: int = 1
    kappa: float = 1.0  # weight of the heads' std in V (with heads > 1)


@dataclass
class PlannerConfig:
    """Latent collocation (LatCo): optimise latent states and actions under the learned dynamics,
    held as constraints through multipliers updated by Eq. 7."""

    horizon: int = 30  # H: knots z_0..z_H, a_0..a_H with z_0 the current posterior
    iterations: int = 100  # primal steps per plan, each followed by a dual step
    replan_every: int = 15  # agent steps executed from each plan
    primal: Literal["gauss_newton", "adam"] = "gauss_newton"  # second-order (LatCo) or first-order step
    damping: float = 1e-3  # delta of (2 J^T J + delta I) dx = 2 J^T r
    line_search: bool = True  # pick the Gauss-Newton step size that lowers the objective (off: full step)
    adam_lr: float = 0.1  # learning rate of the Adam primal
    compile: bool = False  # torch.compile the Adam primal's objective (one-off compile, then ~2x faster)
    dual_alpha: float = 0.1  # alpha of Eq. 7
    dual_eta: float = 0.1  # eta of Eq. 7
    eps_dyn: float = 1e-2  # dynamics violation the multipliers drive towards
    eps_act: float = 1e-2  # action-bound violation the multipliers drive towards
    init_lambda: float = 1.0  # dynamics multipliers at the start of a plan
    init_nu: float = 1.0  # action-bound multipliers at the start of a plan
    min_multiplier: float = 1e-6  # multipliers stay in [min, max]: no underflow while a constraint
    max_multiplier: float = 1e6  # holds, no overflow while a slow primal step lags behind
    # N(0, 1) knots (LatCo), the previous plan shifted, or a rollout of the amortised policy
    init: Literal["random", "shift", "policy"] = "random"
    plans: int = 1  # plans optimised in parallel; the one with the best imagined return is used
    # Action-bound residual: square, max(a^2 - 1, 0) as in LatCo's code (planned better on a held-fixed
    # reacher_easy model: results/frontier/); abs, max(|a| - 1, 0)
    action_residual: Literal["abs", "square"] = "square"
    tolerance: float = 0.0  # stop early once constraints hold and the return changes less (0: never)
    # Candidates scored beside the optimised plans by the same imagined return, the best one executed:
    # policy: the rollout of the agent's policy (Dreamer's actor for value.style=imagination, else the
    # amortised policy); previous: the previous plan shifted by the steps executed
    candidates: list[Literal["policy", "previous"]] = field(default_factory=list)
    # Weight of the trust region sum_k ||a_k - anchor_k||^2 that holds the plan near the actions it
    # started from (the policy's rollout with init=policy; 0: off)
    trust_weight: float = 0.0
    # Gain k of the policy's feedback on the executed actions, a_t = a_plan_t + k (pi(z_t) - pi(z_plan_t)),
    # z_t the filtered real state, z_plan_t the plan's knot (0: open loop, LatCo's). With k = 1 a plan
    # that is the policy's rollout is executed as the policy acting on the real states (closed loop).
    feedback: float = 0.0


@dataclass
class PessimismConfig:
    """Small ensembles whose disagreement makes plans pessimistic where the model is unsure (beyond the
    paper): the planner's reward is ``r(z) - kappa * std_k r_k(z)``, the std over heads trained on the
    replayed rewards at the world model's (detached) mean features, less the excess disagreement of
    heads that predict the observation's embedding there."""

    reward_heads: int = 0  # reward heads (0: off, the planner uses the world model's reward alone)
    reward_kappa: float = 1.0  # weight of their std in the planner's reward
    # Heads predicting the observation's embedding from the feature z (0: off): the planner's reward
    # loses state_kappa * max(u(z) / u_replay - 1, 0), u the heads' disagreement and u_replay its level
    # on replayed states, so plans pay for leaving the states the model was trained on.
    state_heads: int = 0
    state_kappa: float = 1.0  # weight of the state heads' excess disagreement in the planner's reward
    units: int = 128  # hidden units per layer of each head
    layers: int = 2  # hidden layers of each head
    lr: float = 6e-4  # Adam learning rate of the heads


@dataclass
class PolicyConfig:
    """The amortised policy (beyond the paper): trained to output the planner's actions, its
    rollout initialises the plan when ``planner.init=policy``."""

    units: int = 256  # hidden units per layer
    layers: int = 2  # hidden layers
    lr: float = 3e-4  # Adam learning rate
    grad_clip: float = 100.0  # gradient norm clip
    updates: int = 10  # behaviour-cloning steps on each new plan


@dataclass
class LatentObjectiveConfig:
    """The augmented latent objective of Eq. 11 (Fig. 3): (1 / lambda) m(t) A(t) added to the
    world-model objective with a weight that decays while eps_dyn tightens."""

    enabled: bool = False  # add Eq. 11 to the world-model loss
    weight_start: float = 1.0  # its weight at the first world-model update ...
    weight_end: float = 0.0  # ... and from schedule_updates on
    eps_dyn_start: float = 0.1  # the planner's eps_dyn follows this schedule while enabled
    eps_dyn_end: float = 0.01  # ... and its end value
    schedule_updates: int = 10_000  # world-model updates over which both move linearly
    target_period: int = 100  # copy the dynamics into the "old" model every this many updates


@dataclass
class Config:
    """The whole configuration of a run."""

    # how to act (see README); random: uniform actions, the prefill policy, for smoke tests of the loop
    agent: Literal["collodreamer", "latco", "dreamer", "random"] = "collodreamer"
    seed: int = 0  # seeds torch, numpy, the replay sampler and the environments
    device: str = "auto"  # "auto" picks cuda when present, else cpu
    expl_noise: float = 0.3  # std of Gaussian noise on executed actions while training
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    pessimism: PessimismConfig = field(default_factory=PessimismConfig)
    latent_objective: LatentObjectiveConfig = field(default_factory=LatentObjectiveConfig)


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
        config = _merge(config, load_preset(name))
    for text in overrides:
        config = _merge(config, parse_override(text))
    return config


def make_config(
    presets: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    base: Config | None = None,
) -> Config:
    """Layer presets, then overrides, on ``base`` and validate.

    Without ``base`` the layers are: the defaults above, then the chosen agent's own defaults
    (``configs/agents/<agent>.yaml`` where it exists, e.g. ColloDreamer's categorical latents), then
    the presets in order, then the overrides."""
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
    layers += [(f"preset {name}", load_preset(name)) for name in presets]
    layers += [("override", parse_override(text)) for text in overrides]
    for source, data in layers:
        for key in flatten(data):
            sources[key] = source
    return sources


def field_help() -> dict[str, tuple[str, str]]:
    """``{"section.key": (type, help)}`` for every setting: its type as written, and the comment beside
    its field in this file (or the comment block just above it): the settings' one documentation."""
    import inspect
    import re

    field_line = re.compile(r"^\s+(\w+): ([^=]+?) = .*?(?:#\s*(.*))?$")
    sections = [("", Config)] + [
        (f"{f.name}.", f.default_factory)
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(f.default_factory)
    ]
    described: dict[str, tuple[str, str]] = {}
    for prefix, cls in sections:
        names = {f.name for f in dataclasses.fields(cls)}
        above: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            match = field_line.match(line)
            if match and match.group(1) in names and (prefix or f"{match.group(1)}." not in dict(sections)):
                name, hint, comment = match.groups()
                described[prefix + name] = (hint.strip(), comment or " ".join(above))
            above = []
    return described


def has_policy(config: Config) -> bool:
    """Whether the agent holds a policy besides its planner (Dreamer's actor, the imagination
    style's, or LatCo's amortised policy)."""
    planner = config.planner
    return (
        config.agent == "dreamer"
        or planner.init == "policy"
        or "policy" in planner.candidates
        or (config.agent == "collodreamer" and config.value.style == "imagination")
    )


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
        "env.image_size": config.env.image_size,
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
    }.items():
        if value < 0:
            raise ConfigError(f"{key} cannot be negative, got {value}")
    if not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    if not 0 < config.value.gamma <= 1:
        raise ConfigError(f"value.gamma must be in (0, 1], got {config.value.gamma}")
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
    if config.planner.feedback and not has_policy(config):
        raise ConfigError(
            "planner.feedback needs a policy: planner.init=policy, planner.candidates=[policy] or "
            "value.style=imagination (agent collodreamer)"
        )
    if config.planner.trust_weight > 0 and config.planner.init == "random":
        raise ConfigError(
            "planner.trust_weight needs actions to hold the plan near: planner.init=policy or shift"
        )
    if config.env.obs == "pixels" and config.env.image_size != 64:
        raise ConfigError(f"env.image_size: the CNN expects 64, got {config.env.image_size}")


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
    """A saved config in today's names. ``model.amp`` (bfloat16 autocast on CUDA) became
    ``model.precision``: a pixel run resumes in the format it trained in; a state run, which the
    setting does not touch, takes today's default, so it still matches a new run of its settings."""
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
