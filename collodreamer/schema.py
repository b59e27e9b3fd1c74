"""Every setting of a run as a typed dataclass field: its default, its type and its documentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def setting(default: Any, help: str) -> Any:
    """A field with its documentation, ``help``, which ``collodreamer config`` shows beside it."""
    if isinstance(default, list):  # each instance its own copy
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EnvConfig:
    """The environment: a DeepMind Control (or Gymnasium) task seen as pixels or as its state vector."""

    task: str = setting("dmc:reacher_easy", '"dmc:<domain>_<task>" (see `collodreamer tasks`) or "gym:<id>"')
    obs: Literal["pixels", "state"] = setting("pixels", "64x64 RGB images, or the task's state vector")
    action_repeat: int = setting(2, "env frames per agent step; rewards are summed over them")
    time_limit: int = setting(1000, "episode length in env frames")
    camera: int = setting(-1, "dm_control camera; -1: Dreamer's choice (2 for quadruped, 0 otherwise)")
    fast_render: bool = setting(True, "dm_control: offsamples=0, shadowsize=256: ~4x faster rendering")


@dataclass
class ReplayConfig:
    """The on-disk episode store and its sequence sampler."""

    capacity: int = setting(1_000_000, "env frames kept in memory; oldest episodes leave first")
    batch_size: int = setting(50, "sequences per training batch")
    batch_length: int = setting(50, "agent steps per sequence")


@dataclass
class RunConfig:
    """The training loop's schedule. Every count is in env frames (action repeat included)."""

    steps: int = setting(1_000_000, "env frames to train for")
    prefill: int = setting(5000, "random-action env frames before the first gradient step")
    train_every: int = setting(1000, "env frames collected between training phases")
    train_steps: int = setting(100, "gradient steps per training phase")
    eval_start: int = setting(0, "first test at this many env frames, then every eval_every")
    eval_every: int = setting(10_000, "env frames between tests")
    eval_episodes: int = setting(5, "episodes per test")
    checkpoint_every: int = setting(10_000, "checkpoints are written at the next episode end")
    log_every: int = setting(1000, "env frames between metrics records")
    max_nonfinite: int = setting(
        100,
        "Updates (or plans) of one network in a row that may go non-finite, each skipped, before the run "
        "stops with an error naming it; its last finite checkpoint stays on disk.",
    )
    max_weight_growth: float = setting(
        1000.0,
        "A network whose weight norm grows past this many times its level at the start (of the run, or of a "
        "resume) has blown up though finite (a learning rate far too large): the run stops the same way.",
    )
    video: bool = setting(False, "save the first test episode of each evaluation as mp4")
    video_size: int = setting(128, "pixels per side of test videos")
    report: bool = setting(
        False,
        "At each test, also write the report's pictures to TensorBoard: the world model's open-loop "
        "prediction of the latest episode and, for planning agents, one plan traced from a test start.",
    )
    keep_checkpoints: int = setting(0, "keep the checkpoints of the last N tests in checkpoints/ (0: none)")
    wandb: bool = setting(False, "also track the run in Weights & Biases (pip install 'collodreamer[wandb]')")
    wandb_project: str = setting("collodreamer", "the W&B project of tracked runs")
    threads: int = setting(
        1,
        "torch's threads for this run (0: torch's default, one per core). One degrades gracefully beside "
        "other processes; more threads than free cores wait on each other (0.45 s against 15.9 s per plan "
        "beside two busy runs: results/benchmarks/after/planning_threads*_beside_two_runs.json).",
    )


@dataclass
class ModelConfig:
    """The world model: encoder, RSSM, decoder and reward head, trained by Eq. 4 (DreamerV1 defaults)."""

    latent: Literal["gaussian", "categorical"] = setting(
        "gaussian", "stochastic latent: DreamerV1 or DreamerV2"
    )
    deter: int = setting(200, 'GRU state size (the paper\'s "latent vector length")')
    stoch: int = setting(30, "Gaussian dimensions, or number of categorical variables")
    classes: int = setting(32, "classes per categorical variable")
    hidden: int = setting(200, "RSSM hidden layers")
    units: int = setting(400, "width of the MLP encoder (states), decoder (states) and reward head")
    layers: int = setting(2, "hidden layers of those MLPs")
    cnn_depth: int = setting(32, "channels of the first conv layer (pixels)")
    min_std: float = setting(0.1, "Gaussian latents: lower bound of the std")
    unimix: float = setting(
        0.0, "categorical latents: mix of the uniform distribution into the probabilities"
    )
    gru_norm: bool = setting(False, "layer norm inside the GRU (DreamerV2)")
    kl_balancing: bool = setting(False, "Listing 1; off is DreamerV1's plain KL(post || prior)")
    kl_balance: float = setting(0.8, "alpha of Listing 1")
    free_nats: float = setting(3.0, "KL below this many nats is not penalised")
    kl_scale: float = setting(1.0, "beta of Eq. 4")
    lr: float = setting(6e-4, "Adam learning rate")
    grad_clip: float = setting(100.0, "gradient norm clip")
    precision: Literal["float32", "bfloat16", "auto"] = setting(
        "auto",
        "Number format of the conv encoder and decoder (pixels; state runs are always float32): bfloat16 "
        "autocast there, the RSSM, KL, losses, behaviour and planner in float32. On this CPU (AVX512-BF16) a "
        "pixels_cpu world-model update costs 690 ms instead of 924 in float32 "
        "(results/benchmarks/precision/). auto: bfloat16 where the device computes it natively (a CPU with "
        "AVX512-BF16 or AMX, a CUDA GPU that supports it), else float32",
    )


@dataclass
class ActorConfig:
    """Dreamer's actor: a tanh-Gaussian policy trained through imagined trajectories."""

    horizon: int = setting(15, "imagination horizon in agent steps")
    starts: int = setting(0, "imagine from this many random posterior states of the batch (0: all of them)")
    lr: float = setting(8e-5, "Adam learning rate")
    units: int = setting(400, "hidden units per layer")
    layers: int = setting(4, "hidden layers")
    init_std: float = setting(5.0, "initial std of the pre-tanh Gaussian")
    min_std: float = setting(1e-4, "lower bound of that std")
    mean_scale: float = setting(5.0, "the pre-tanh mean is mean_scale * tanh(mean / mean_scale)")
    entropy: float = setting(
        0.03,
        "Weight of the policy's entropy in the actor loss (DreamerV1: none, 0). Without it the actor's "
        "actions saturated at +-1 on reacher from states; results/README.md (Learning) derives 0.03.",
    )
    grad_clip: float = setting(100.0, "gradient norm clip")


@dataclass
class ValueConfig:
    """The value V(z) and its slow target copy V'."""

    gamma: float = setting(0.99, "discount per agent step (Eq. 10)")
    lam: float = setting(0.95, "lambda of the TD(lambda) targets (Dreamer's, and the replay style's)")
    lr: float = setting(8e-5, "Adam learning rate")
    units: int = setting(400, "hidden units per layer")
    layers: int = setting(3, "hidden layers")
    grad_clip: float = setting(100.0, "gradient norm clip")
    target_period: int = setting(100, "update V' after every this many value updates ...")
    target_tau: float = setting(1.0, "... by V' <- tau * V + (1 - tau) * V'")
    # Regularisers of Fig. 1 (each a switch), and layer norm, which needs no batch statistics:
    norm: Literal["none", "before", "after", "layer"] = setting("none", "before/after: batch norm around ELU")
    dropout: list[float] = setting([], "drop probability per hidden layer ([] = none)")
    clip: bool = setting(False, "clip V to [clip_low, clip_high]")
    clip_low: float = setting(0.0, "lower bound of the clip")
    clip_high: float = setting(200.0, "upper bound of the clip")
    clip_mode: Literal["hard", "straight_through"] = setting(
        "hard",
        "hard: the paper's clamp, no gradient outside the range; straight_through: clamped forward, the "
        "network's own gradient backward, so the planner can still climb V where it is clipped",
    )
    style: Literal["inner", "after", "replay", "imagination"] = setting(
        "inner",
        "ColloDreamer: how V learns. inner: from the plan after every planner iteration (Algorithm 1); "
        "after: from the executed segment's posterior states (Fig. 2); replay: TD(lambda) targets of real "
        "rewards on replayed posterior sequences, in every training step; imagination: Dreamer's critic on "
        "imagined rollouts of its actor, which also warm-starts plans (planner.init=policy).",
    )
    after_updates: int = setting(100, 'value updates per executed segment in the "after" style')
    update_every: int = setting(1, "inner style: planner iterations between value updates")
    plan_batch: int = setting(
        1,
        "inner/after styles: plans (or segments) per value update, the current one and the latest others; "
        "more than one gives batch norm statistics across plans rather than along one plan",
    )
    weight: float = setting(1.0, "scales the planner's terminal value term (Eq. 10's gamma^(H+1) V)")
    heads: int = setting(
        1,
        "Pessimism (beyond the paper): V is the mean minus kappa times the std over this many value heads, "
        "each trained on the same targets, which come from that estimate of V'; with 2 heads and kappa 1 it "
        "is their minimum (TD-MPC2's). 1: one value network, as in the paper.",
    )
    kappa: float = setting(1.0, "weight of the heads' std in V (with heads > 1)")


@dataclass
class PlannerConfig:
    """Latent collocation (LatCo): optimise latent states and actions under the learned dynamics,
    held as constraints through multipliers updated by Eq. 7."""

    horizon: int = setting(30, "H: knots z_0..z_H, a_0..a_H with z_0 the current posterior")
    iterations: int = setting(100, "primal steps per plan, each followed by a dual step")
    replan_every: int = setting(15, "agent steps executed from each plan")
    primal: Literal["gauss_newton", "adam"] = setting("gauss_newton", "second-order (LatCo) or first-order")
    damping: float = setting(1e-3, "delta of (2 J^T J + delta I) dx = 2 J^T r")
    line_search: bool = setting(True, "a Gauss-Newton step size that lowers the objective (off: full step)")
    adam_lr: float = setting(0.1, "learning rate of the Adam primal")
    compile: bool = setting(False, "torch.compile the Adam primal's objective (~2x faster once compiled)")
    dual_alpha: float = setting(0.1, "alpha of Eq. 7")
    dual_eta: float = setting(0.1, "eta of Eq. 7")
    eps_dyn: float = setting(1e-2, "dynamics violation the multipliers drive towards")
    eps_act: float = setting(1e-2, "action-bound violation the multipliers drive towards")
    init_lambda: float = setting(1.0, "dynamics multipliers at the start of a plan")
    init_nu: float = setting(1.0, "action-bound multipliers at the start of a plan")
    min_multiplier: float = setting(1e-6, "lower bound: no underflow while a constraint holds")
    max_multiplier: float = setting(1e6, "upper bound: no overflow while a slow primal step lags behind")
    init: Literal["random", "shift", "policy"] = setting(
        "random", "N(0, 1) knots (LatCo), the previous plan shifted, or a rollout of the amortised policy"
    )
    plans: int = setting(1, "plans optimised in parallel; the one with the best imagined return is used")
    action_residual: Literal["abs", "square"] = setting(
        "square",
        "Action-bound residual: square, max(a^2 - 1, 0) as in LatCo's code (planned better on a held-fixed "
        "reacher_easy model: results/frontier/); abs, max(|a| - 1, 0)",
    )
    tolerance: float = setting(0.0, "stop early once constraints hold and the return changes less (0: never)")
    candidates: list[Literal["policy", "previous"]] = setting(
        [],
        "Candidates scored beside the optimised plans by the same imagined return, the best one executed: "
        "policy: the rollout of the agent's policy (Dreamer's actor for value.style=imagination, else the "
        "amortised policy); previous: the previous plan shifted by the steps executed",
    )
    candidate_margin: float = setting(
        0.0,
        "An optimised plan is executed only where its imagined return beats the best candidate's by this "
        "fraction of the candidate's |return|; else the candidate (0: the best return wins)",
    )
    calibration_rate: float = setting(
        0.0,
        "Rate of the running means, over executed segments, of each kind of plan's rollout gap (reward per "
        "step a model rollout of the executed actions predicts, less what was paid): optimised plans and "
        "candidates. An optimised plan's score loses the excess of its kind's gap over the candidates', "
        "times sum_k gamma^k, before it competes with them (0: off)",
    )
    score_samples: int = setting(
        0,
        "Plans and candidates are chosen by their mean imagined return over this many rollouts of their "
        "actions through the sampled prior (z' drawn from q, PETS' trajectory sampling) instead of one "
        "through its mean mu (0: the mean, LatCo's)",
    )
    trust_weight: float = setting(
        0.0,
        "Weight of the trust region sum_k ||a_k - anchor_k||^2 that holds the plan near the actions it "
        "started from (the policy's rollout with init=policy; 0: off)",
    )
    feedback: float = setting(
        0.0,
        "Gain k of the policy's feedback on the executed actions, a_t = a_plan_t + k (pi(z_t) - "
        "pi(z_plan_t)), z_t the filtered real state, z_plan_t the plan's knot (0: open loop, LatCo's). With "
        "k = 1 a plan that is the policy's rollout is executed as the policy acting on the real states "
        "(closed loop).",
    )
    train_acting: Literal["plan", "actor"] = setting(
        "plan",
        "How the agent acts while collecting training data: by its plans, or (collodreamer with "
        "value.style=imagination) by its actor alone, sampled with exploration noise as Dreamer acts; "
        "tests always plan. With actor, training costs what Dreamer's does and the data are the actor's.",
    )


@dataclass
class PessimismConfig:
    """Small ensembles whose disagreement makes plans pessimistic where the model is unsure (beyond
    the paper), trained at the world model's (detached) mean features of replayed states: reward
    heads on the rewards, state heads on the observations' embeddings, u their disagreement and
    u_replay its level on replayed states."""

    reward_heads: int = setting(0, "reward heads (0: off); the planner's reward loses kappa * their std")
    reward_kappa: float = setting(1.0, "weight of their std in the planner's reward")
    state_heads: int = setting(0, "embedding heads (0: off): reward less kappa * max(u / u_replay - 1, 0)")
    state_kappa: float = setting(1.0, "weight of the state heads' excess disagreement")
    units: int = setting(128, "hidden units per layer of each head")
    layers: int = setting(2, "hidden layers of each head")
    lr: float = setting(6e-4, "Adam learning rate of the heads")


@dataclass
class PolicyConfig:
    """The amortised policy (beyond the paper): trained to output the planner's actions, its
    rollout initialises the plan when ``planner.init=policy``."""

    units: int = setting(256, "hidden units per layer")
    layers: int = setting(2, "hidden layers")
    lr: float = setting(3e-4, "Adam learning rate")
    grad_clip: float = setting(100.0, "gradient norm clip")
    updates: int = setting(10, "behaviour-cloning steps on each new plan")


@dataclass
class LatentObjectiveConfig:
    """The augmented latent objective of Eq. 11 (Fig. 3): (1 / lambda) m(t) A(t) added to the
    world-model objective with a weight that decays while eps_dyn tightens."""

    enabled: bool = setting(False, "add Eq. 11 to the world-model loss")
    weight_start: float = setting(1.0, "its weight at the first world-model update ...")
    weight_end: float = setting(0.0, "... and from schedule_updates on")
    eps_dyn_start: float = setting(0.1, "the planner's eps_dyn follows this schedule while enabled")
    eps_dyn_end: float = setting(0.01, "... and its end value")
    schedule_updates: int = setting(10_000, "world-model updates over which both move linearly")
    target_period: int = setting(100, 'copy the dynamics into the "old" model every this many updates')


@dataclass
class Config:
    """The whole configuration of a run."""

    agent: Literal["collodreamer", "latco", "dreamer", "random"] = setting(
        "collodreamer",
        "how to act (see README); random: uniform actions, the prefill policy, for smoke tests of the loop",
    )
    seed: int = setting(0, "seeds torch, numpy, the replay sampler and the environments")
    device: str = setting("auto", '"auto" picks cuda when present, else cpu')
    expl_noise: float = setting(0.3, "std of Gaussian noise on executed actions while training")
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
