"""Score planner and value variants on one trained world model held fixed, by real test return.

    collodreamer screen RUN_DIR SPEC --out DIR [--episodes 10] [--only NAME ...] [key=value ...]
    collodreamer screen RUN_DIR SPEC --out DIR --report

A spec (a file, or a name from ``configs/screens/``) names the agent and its variants (lists of
key=value overrides on RUN_DIR's config, after those given on the command line; model sizes stay as
trained), e.g. ``configs/screens/value_screen.yaml``::

    agent: collodreamer
    value_updates: 2000     # replay / imagination styles: value (or actor-critic) steps
    plans: 300              # inner / after styles: plans (or replayed segments) to learn from
    variants:
      latco: [agent=latco]
      replay: [value.style=replay]
      replay_h15: [value.style=replay, planner.horizon=15]
    shares:                 # optional: variants that act with what another variant learnt
      replay_h15: replay
    warmup:                 # optional: episodes a variant plays before its test
      replay_h15: 10

Per variant: an agent holding RUN_DIR's world model, which is never updated here. What the agent
learns besides the world model (a collodreamer value, reward or value heads, Dreamer's actor and
critic) is first learnt on the run's replay, filtered once by that model, with the budget above
(``agents.*.learn_held_fixed``: ``inner``: plans from replayed posterior states, a value step after
every iteration; ``after``: replayed segments of ``replan_every`` steps; ``replay``: TD(lambda) steps
on replayed windows; ``imagination`` and Dreamer: actor-critic steps from replayed states). A variant
named under ``shares`` loads instead what the variant it names learnt (saved as
``DIR/<variant>.learned.pt``): it must differ from it only in how it acts, or in pessimism heads that
the named variant lacks, which it then learns alone (as many batches); the comparison is then paired
in what was learnt as well as in start states. Then ``--episodes``
test episodes in the real environment, without exploration noise, from the same start states for
every variant (the test environment's seed is fixed). A variant named under ``warmup`` first plays that
many episodes from other start states, so that what it keeps across episodes (the calibrated
selection's running gaps, ``planner.calibration_rate``) enters its test as a learning run's would;
an agent that keeps nothing across episodes tests exactly as without them. Each variant's result is written to
``DIR/<variant>.json`` as it ends (rerunning skips those present); ``--report`` writes
``DIR/screen.json`` and ``DIR/screen.md``: mean test return with a 95% bootstrap interval, the
paired difference to the first variant (same start states) with its interval, ms and iterations
per plan, the seconds spent training the value, and how well the trained value predicts the real
discounted reward-to-go of the run's last episodes (``value_diagnostics.value_accuracy``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.analysis.held_fixed import build_agent, filter_replay
from collodreamer.analysis.value import value_accuracy
from collodreamer.config import ConfigError, load_spec_file
from collodreamer.envs import make_env
from collodreamer.experiments.stats import bootstrap_ci
from collodreamer.files import write_json
from collodreamer.seeds import SCREEN_SEED, WARMUP_SEED
from collodreamer.timing import machine
from collodreamer.training import evaluate
from collodreamer.training.checkpoint import restoring

# A screen spec's keys: the agent its variants start from, the value (actor-critic) updates and plans
# each learns on the replay, the variants, which variant's learnt parts another takes, and the episodes
# a variant plays before its test.
SCREEN_KEYS = {"agent", "value_updates", "plans", "variants", "shares", "warmup"}


def learn(agent, replay, spec: dict, heads_only: bool = False) -> float:
    """Train what the agent learns besides the world model (reward heads, value, actor) on the
    held-fixed replay, as a run would, or its pessimism heads alone as many batches; seconds."""
    start, rng = time.perf_counter(), np.random.default_rng(0)
    sample = lambda count, length: replay.windows(count, length, rng)  # noqa: E731
    updates = spec.get("value_updates", 2000)
    if heads_only:
        batch = agent.config.replay
        for _ in range(updates):
            agent.learn_pessimism(*sample(batch.batch_size, batch.batch_length))
    else:
        agent.learn_held_fixed(sample, updates, spec.get("plans", 300))
    agent.metrics()  # drop what learning logged
    return time.perf_counter() - start


def screen_variant(
    run_dir: Path, spec: dict, name: str, overrides: list[str], episodes: int, out: Path
) -> dict:
    agent_name = spec.get("agent", "collodreamer")
    config, agent, _ = build_agent(run_dir, [f"agent={agent_name}", *overrides])
    replay = filter_replay(agent, run_dir, config)
    source = spec.get("shares", {}).get(name)
    if source is None:
        learn_seconds = learn(agent, replay, spec)
        torch.save(agent.state_dict(), out / f"{name}.learned.pt")
    else:  # what the source learnt; pessimism heads it lacks learn here
        path = out / f"{source}.learned.pt"
        if not path.exists():
            raise ConfigError(f"variant {name} shares what {source} learnt: screen {source} first ({path})")
        fresh = agent.state_dict()
        with restoring(path):
            learned = torch.load(path, weights_only=True)
            agent.load_state_dict({**fresh, **learned})
        learn_seconds = learn(agent, replay, spec, heads_only=True) if set(fresh) - set(learned) else 0.0
    accuracy = value_accuracy(agent, replay, config.value.gamma) if config.agent != "latco" else None
    warmup = play(agent, config, WARMUP_SEED, spec.get("warmup", {}).get(name, 0))
    agent.metrics()  # drop what the warm-up logged
    start = time.perf_counter()
    returns = play(agent, config, SCREEN_SEED, episodes)
    metrics = agent.metrics()
    return {
        "variant": name,
        "overrides": overrides,
        "agent": config.agent,
        "returns": returns,
        "mean": float(np.mean(returns)),
        "ci95": bootstrap_ci(returns),
        "plan_ms": metrics.get("plan/ms"),
        "plan_iterations": metrics.get("plan/iterations"),
        "test_metrics": metrics,
        "test_seconds": time.perf_counter() - start,
        "value_train_seconds": learn_seconds,
        "learned_from": source or name,
        "warmup_returns": warmup,
        "value_accuracy": accuracy,
        "machine": machine(),
    }


def play(agent, config, seed: int, episodes: int) -> list[float]:
    """The returns of ``episodes`` test episodes (no exploration noise) from the start states of the
    environment seeded ``seed``; torch seeded alike for every variant."""
    if not episodes:
        return []
    torch.manual_seed(0)
    env = make_env(config.env, seed)
    try:
        return evaluate(agent, env, episodes)[0]
    finally:
        env.close()


def screen_report(spec: dict, out: Path) -> str:
    """``DIR/screen.md`` and ``DIR/screen.json`` from the variants' results present; the table."""
    rows = [
        json.loads((out / f"{name}.json").read_text())
        for name in spec["variants"]
        if (out / f"{name}.json").exists()
    ]
    if not rows:
        raise ConfigError(f"no variant results in {out}")
    reference = np.asarray(rows[0]["returns"])
    lines = [
        f"| variant | test return (mean, 95% CI) | paired difference to {rows[0]['variant']} | ms per plan "
        "| iterations per plan | promise gap: plan, rollout (reward per step) | value gap "
        "| learning (s) | V vs real reward-to-go: correlation, bias |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        returns = np.asarray(row["returns"])
        row["paired_difference"] = float(np.mean(returns - reference))
        row["paired_ci95"] = bootstrap_ci(returns - reference) if len(returns) == len(reference) else None
        low, high = row["ci95"]
        paired = row["paired_ci95"] or (float("nan"), float("nan"))
        ms = f"{row['plan_ms']:.0f}" if row["plan_ms"] else "-"
        iterations = f"{row['plan_iterations']:.1f}" if row["plan_iterations"] else "-"
        difference = row["paired_difference"]
        fit = row.get("value_accuracy")
        accuracy = f"{fit['correlation']:.2f}, {fit['bias']:+.1f}" if fit else "-"
        test = row.get("test_metrics", {})
        gap = (
            f"{test['plan/promise_gap']:+.3f}, {test['plan/rollout_gap']:+.3f}"
            if "plan/promise_gap" in test
            else "-"
        )
        value_gap = f"{test['plan/value_gap']:+.1f}" if "plan/value_gap" in test else "-"
        lines.append(
            f"| {row['variant']} | {row['mean']:.1f} [{low:.1f}, {high:.1f}] | {difference:+.1f} "
            f"[{paired[0]:+.1f}, {paired[1]:+.1f}] | {ms} | {iterations} | {gap} | {value_gap} "
            f"| {row['value_train_seconds']:.0f} | {accuracy} |"
        )
    (out / "screen.md").write_text("\n".join(lines) + "\n")
    write_json(out / "screen.json", {"benchmark": "screen", "machine": machine(), "spec": spec, "rows": rows})
    return "\n".join(lines)


def load_screen(name: str) -> dict[str, Any]:
    """A screen spec by path, or by name from ``configs/screens/``: its variants (name -> overrides),
    which variant's learnt parts each may share and how many episodes each plays before its test."""
    spec = load_spec_file(name, "screens", SCREEN_KEYS, "screen spec")
    variants, shares = spec.get("variants"), spec.get("shares", {})
    if (
        not isinstance(variants, dict)
        or not variants
        or not all(isinstance(v, list) for v in variants.values())
    ):
        raise ConfigError("screen spec: 'variants' maps each variant name to a list of key=value overrides")
    if not isinstance(shares, dict) or not set(shares) | set(shares.values()) <= set(variants):
        raise ConfigError("screen spec: 'shares' maps a variant to the variant whose learnt parts it takes")
    warmup = spec.get("warmup", {})
    if (
        not isinstance(warmup, dict)
        or not set(warmup) <= set(variants)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in warmup.values())
    ):
        raise ConfigError(
            "screen spec: 'warmup' maps a variant to how many episodes it plays before its test"
        )
    return spec


def screen(
    run_dir: Path,
    spec: dict[str, Any],
    out: Path,
    episodes: int = 10,
    only: list[str] | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Screen every variant of ``spec`` (or those ``only`` names) on ``run_dir``'s held-fixed model,
    each result written to ``out/<variant>.json`` as it ends; variants with a result are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    for name, variant in spec["variants"].items():
        if (only and name not in only) or (out / f"{name}.json").exists():
            continue
        print(f"{name}: {' '.join(variant)}", flush=True)
        row = screen_variant(run_dir, spec, name, [*(overrides or []), *variant], episodes, out)
        write_json(out / f"{name}.json", {**row, "run": str(run_dir)})
        print(f"{name}: {row['mean']:.1f} {row['ci95']} ({row['test_seconds']:.0f} s)", flush=True)
