"""The paper's figures from run directories: curves over env frames (mean over seeds with a bootstrap
band, one panel per task, one line per agent or variant) and Markdown tables of final returns."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from collodreamer.config import ConfigError, load_config
from collodreamer.experiments.stats import aggregate, bootstrap_ci, iqm, stratified_bootstrap_ci
from collodreamer.rundir import RunDir, runs_under
from collodreamer.training.logger import read_metrics

FINAL_TRAIN_EPISODES = 3  # the train return of a run is the mean of its last few episodes
FINAL_RECORDS = 5  # another metric's final value in a run: the mean of its last few records
FINAL_VALUE = f"a test metric's at the final test, another's the mean of a run's last {FINAL_RECORDS} records"
MAX_RETURN = 1000.0  # a DeepMind Control episode's best possible return: the normaliser of scores


@dataclass
class RunData:
    name: str
    agent: str
    task: str
    obs: str
    seed: int
    variant: str
    records: list[dict]

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(env frames, values) of ``metric``; where a resumed run logged a step twice, the last wins."""
        points = {r["step"]: r[metric] for r in self.records if metric in r}
        steps = np.array(sorted(points), dtype=float)
        return steps, np.array([points[s] for s in sorted(points)], dtype=float)


def find_runs(paths: list[Path]) -> list[RunData]:
    """Every run under ``paths``: run directories themselves, or folders of runs (e.g. a sweep root,
    whose ``sweep.yaml`` names each run's variant)."""
    runs = []
    for path in map(Path, paths):
        candidates = runs_under(path, lambda run: run.metrics.exists())
        if not candidates:
            raise ConfigError(f"no runs (folders with metrics.jsonl) under {path}")
        for run_dir in candidates:
            variants = _variants(run_dir.parent / "sweep.yaml")
            config = load_config(RunDir(run_dir).config)
            runs.append(
                RunData(
                    run_dir.name,
                    config.agent,
                    config.env.task,
                    config.env.obs,
                    config.seed,
                    variants.get(run_dir.name, ""),
                    read_metrics(RunDir(run_dir).metrics),
                )
            )
    return runs


def _variants(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {run["name"]: run["variant"] for run in (yaml.safe_load(path.read_text()) or {}).get("runs", [])}


def label_of(run: RunData, runs: list[RunData]) -> str:
    """Name a line by what differs between the runs: the agent, the variant, or both."""
    agents = {r.agent for r in runs}
    variants = {r.variant for r in runs}
    if len(variants) <= 1:
        return run.agent
    if len(agents) == 1:
        return run.variant
    return f"{run.agent} ({run.variant})"


def group(runs: list[RunData]) -> dict[str, dict[str, list[RunData]]]:
    """task -> label -> the runs (seeds) of that line."""
    groups: dict[str, dict[str, list[RunData]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run.task][label_of(run, runs)].append(run)
    return groups


def seed_matrix(runs: list[RunData], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Curves of several seeds on one grid of env frames (interpolated where they were logged at
    different frames, as train returns are), cut to the frames every seed reached."""
    curves = [run.curve(metric) for run in runs]
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.empty(0), np.empty((0, 0))
    end = min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x[x <= end] for x, _ in curves]))
    return grid, np.stack([np.interp(grid, x, y) for x, y in curves])


def plot_metric(runs: list[RunData], metric: str, path: Path, title: str = "") -> Path:
    """One PNG: a panel per task, a line per label (mean over seeds) with a 95% bootstrap band; a label
    keeps its colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(runs)
    colours = {
        label: f"C{i}"
        for i, label in enumerate(sorted({label for lines in groups.values() for label in lines}))
    }
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, (task, lines) in zip(axes[0], sorted(groups.items()), strict=True):
        for label, members in sorted(lines.items()):
            grid, values = seed_matrix(members, metric)
            if not len(grid):
                continue
            mean = values.mean(0)
            ax.plot(grid, mean, color=colours[label], label=f"{label} (n={len(values)})")
            if len(values) > 1:
                band = np.array([bootstrap_ci(values[:, i]) for i in range(len(grid))])
                ax.fill_between(grid, band[:, 0], band[:, 1], color=colours[label], alpha=0.2)
        ax.set(title=task.split(":", 1)[-1], xlabel="env frames", ylabel=metric)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def final_train_return(run: RunData) -> float | None:
    _, values = run.curve("train/return")
    return float(values[-FINAL_TRAIN_EPISODES:].mean()) if len(values) else None


def common_test_points(runs: list[RunData], metric: str = "test/return") -> dict[int, np.ndarray]:
    """The runs' test values of ``metric`` (by default the return) at each test point (env frames, in
    order) that every run has reached, so that seeds cut short at different frames are compared at
    the same points."""
    curves = [dict(zip(*run.curve(metric), strict=True)) for run in runs]
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    return {int(step): np.array([curve[step] for curve in curves]) for step in steps}


def common_test_returns(runs: list[RunData], metric: str = "test/return") -> tuple[int, np.ndarray] | None:
    """The latest test point that every run has reached and the runs' returns (or other test
    ``metric``) there; None if none."""
    points = common_test_points(runs, metric)
    if not points:
        return None
    step = max(points)
    return step, points[step]


def mean_ci_iqm(values: np.ndarray) -> list[str]:
    low, high = bootstrap_ci(values)
    return [f"{values.mean():.1f} [{low:.1f}, {high:.1f}]", f"{iqm(values):.1f}"]


def results_table(runs: list[RunData]) -> str:
    """Markdown: per task and line, the seeds, the env frames reached, the final train return (mean of
    the last episodes) and the test return at the latest test point common to all seeds, each as
    mean, IQM and 95% bootstrap interval of the mean over seeds."""
    rows = [
        "| task | agent | seeds | env frames | train return: mean [95% CI] | train IQM "
        "| tested at env frames | test return: mean [95% CI] | test IQM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, lines in sorted(group(runs).items()):
        for label, members in sorted(lines.items()):
            frames = min(
                int(r.curve("train/return")[0][-1]) if len(r.curve("train/return")[0]) else 0 for r in members
            )
            train = np.array([v for v in map(final_train_return, members) if v is not None])
            cells = mean_ci_iqm(train) if len(train) else ["-", "-"]
            test = common_test_returns(members)
            cells += [str(test[0]), *mean_ci_iqm(test[1])] if test else ["-", "-", "-"]
            rows.append(
                f"| {task.split(':', 1)[-1]} | {label} | {len(members)} | {frames} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(rows) + "\n"


def metrics_table(runs: list[RunData], metrics: list[str]) -> str:
    """Markdown: per task and line, each metric's final value (:func:`final_value`) as the mean over
    seeds with a 95% bootstrap interval; "-" where no run logged it."""
    rows = [
        "| task | line | seeds | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for task, lines in sorted(group(runs).items()):
        for label, members in sorted(lines.items()):
            cells = []
            for metric in metrics:
                finals = np.array([final[1] for run in members if (final := final_value(run, metric))])
                low, high = bootstrap_ci(finals) if len(finals) else (0.0, 0.0)
                cells.append(f"{finals.mean():.3g} [{low:.3g}, {high:.3g}]" if len(finals) else "-")
            rows.append(
                f"| {task.split(':', 1)[-1]} | {label} | {len(members)} | " + " | ".join(cells) + " |"
            )
    return "\n".join(rows) + "\n"


def final_value(run: RunData, metric: str) -> tuple[int, float] | None:
    """(env frames of its last record, its final value) of ``metric`` in ``run``: a test metric's
    (``test/...``) last record, the final test (itself a mean over its episodes); another metric's
    mean over its last ``FINAL_RECORDS`` records. None if the run never logged it."""
    steps, values = run.curve(metric)
    if not len(values):
        return None
    last = 1 if metric.startswith("test/") else FINAL_RECORDS
    return int(steps[-1]), float(values[-last:].mean())


def final_scores(runs: list[RunData]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, int]]]:
    """label -> task -> each seed's test return at the latest test point all of them reached,
    normalised by the task's best possible return; and the env frames of that point."""
    scores: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    frames: dict[str, dict[str, int]] = defaultdict(dict)
    for task, lines in group(runs).items():
        for label, members in lines.items():
            test = common_test_returns(members)
            if test:
                frames[label][task], returns = test
                scores[label][task] = returns / MAX_RETURN
    return dict(scores), dict(frames)


def write_aggregate(runs: list[RunData], out: Path) -> list[Path]:
    """Across tasks (when the runs span several tasks and lines): ``aggregate.json`` with each line's
    IQM of normalised final test returns and the probabilities of improvement, both with stratified
    bootstrap intervals, and ``aggregate.png`` drawing them."""
    scores, frames = final_scores(runs)
    tasks = {task for by_task in scores.values() for task in by_task}
    if len(scores) < 2 or len(tasks) < 2:
        return []
    result = {**aggregate(scores), "tested_at_env_frames": frames, "normaliser": MAX_RETURN}
    json_path = out / "aggregate.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.6 * len(scores) + 1.8))
    labels = sorted(result["agents"])
    for row, label in enumerate(labels):
        entry = result["agents"][label]
        left.errorbar(
            entry["iqm"],
            row,
            xerr=[[entry["iqm"] - entry["ci"][0]], [entry["ci"][1] - entry["iqm"]]],
            fmt="o",
            capsize=4,
        )
    left.set(yticks=range(len(labels)), yticklabels=labels, xlabel="IQM of normalised test return (95% CI)")
    pairs = sorted(k for k in result["probability_of_improvement"] if k.split(">")[0] < k.split(">")[1])
    for row, pair in enumerate(pairs):
        p, (low, high) = (
            result["probability_of_improvement"][pair],
            result["probability_of_improvement_ci"][pair],
        )
        right.errorbar(p, row, xerr=[[p - low], [high - p]], fmt="o", capsize=4)
    right.axvline(0.5, color="grey", lw=0.8, ls="--")
    right.set(yticks=range(len(pairs)), yticklabels=[p.replace(">", " > ") for p in pairs], xlim=(0, 1))
    right.set(xlabel="P(X > Y) (95% CI)")
    fig.suptitle(f"{len(tasks)} tasks: " + ", ".join(sorted(t.split(":", 1)[-1] for t in tasks)))
    fig.tight_layout()
    png_path = out / "aggregate.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [json_path, png_path]


def _paired(run: RunData, base: RunData, metric: str) -> tuple[int, float] | None:
    """(env frames, ``run``'s value minus ``base``'s): a test metric's (``test/...``) at the latest test
    point both reached, another metric's final values (:func:`final_value`) at the fewer frames of
    the two."""
    if metric.startswith("test/"):
        point = common_test_returns([run, base], metric)
        return (point[0], float(point[1][0] - point[1][1])) if point else None
    mine, theirs = final_value(run, metric), final_value(base, metric)
    if mine is None or theirs is None:
        return None
    return min(mine[0], theirs[0]), mine[1] - theirs[1]


def paired_differences(runs: list[RunData], baseline: str, metric: str = "test/return") -> list[dict]:
    """Each line's ``metric`` minus the ``baseline`` line's, paired by task and seed (:func:`_paired`):
    per task (the per-seed differences, their mean and 95% bootstrap interval) and over all tasks
    (the mean of every pair, with a bootstrap interval stratified by task)."""
    groups = group(runs)
    labels = sorted({label for lines in groups.values() for label in lines})
    if baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is none of the lines: {', '.join(labels)}")
    by_line: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    rows = []
    for task, lines in sorted(groups.items()):
        base = {run.seed: run for run in lines.get(baseline, [])}
        for label, members in sorted(lines.items()):
            if label == baseline:
                continue
            members = sorted((run for run in members if run.seed in base), key=lambda run: run.seed)
            points = [(run.seed, _paired(run, base[run.seed], metric)) for run in members]
            pairs = [(seed, point) for seed, point in points if point]
            if not pairs:
                continue
            differences = np.array([difference for _, (_, difference) in pairs])
            by_line[label][task] = differences
            rows.append(
                {
                    "task": task,
                    "line": label,
                    "seeds": [seed for seed, _ in pairs],
                    "env_frames": [frames for _, (frames, _) in pairs],
                    "differences": differences.tolist(),
                    "mean": float(differences.mean()),
                    "ci": list(bootstrap_ci(differences)),
                }
            )
    for label, tasks in sorted(by_line.items()):
        pooled = lambda s, label=label: float(np.concatenate(list(s[label].values())).mean())  # noqa: E731
        rows.append(
            {
                "task": "all",
                "line": label,
                "pairs": int(sum(len(v) for v in tasks.values())),
                "mean": pooled(by_line),
                "ci": list(stratified_bootstrap_ci({label: tasks}, pooled)),
            }
        )
    return rows


def differences_table(rows: list[dict], baseline: str, metric: str = "test/return") -> str:
    """Markdown of :func:`paired_differences`: returns to one decimal, other metrics to 3 figures."""
    number = "{:+.1f}" if metric == "test/return" else "{:+.3g}"
    lines = [
        f"| task | line | {metric.replace('/', ' ').replace('_', ' ')} minus {baseline}'s, per seed "
        "| mean [95% CI] |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if row["task"] == "all":
            per_seed = f"{row['pairs']} pairs (interval stratified by task)"
        else:
            per_seed = ", ".join(
                f"s{seed}: {number.format(d)} (at {f})"
                for seed, d, f in zip(row["seeds"], row["differences"], row["env_frames"], strict=True)
            )
        low, high = row["ci"]
        lines.append(
            f"| {row['task'].split(':', 1)[-1]} | {row['line']} | {per_seed} | "
            f"{number.format(row['mean'])} [{number.format(low)}, {number.format(high)}] |"
        )
    return "\n".join(lines) + "\n"


def write_differences(
    runs: list[RunData], baseline: str, out: Path, name: str, metrics: tuple[str, ...] = ()
) -> list[Path]:
    """``{name}_differences.md`` and ``.json``: :func:`paired_differences` against ``baseline`` of the
    test return, then of each of ``metrics``' final values (in the JSON under ``final_values``)."""
    rows = paired_differences(runs, baseline)
    others = {metric: paired_differences(runs, baseline, metric) for metric in metrics}
    text = differences_table(rows, baseline)
    for metric, metric_rows in others.items():
        text += f"\n{metric}, final values ({FINAL_VALUE}):\n\n" + differences_table(
            metric_rows, baseline, metric
        )
    table, data = out / f"{name}_differences.md", out / f"{name}_differences.json"
    table.write_text(text)
    payload = {"baseline": baseline, "rows": rows, "final_values": others}
    data.write_text(json.dumps(payload, indent=2) + "\n")
    return [table, data]


def make_figures(
    paths: list[Path], metrics: list[str], out: Path, name: str, baseline: str | None = None
) -> list[Path]:
    """For the runs under ``paths``, written to ``out``: plots of ``metrics``, the results table (with
    the other metrics' final values), across tasks the aggregate, and given a ``baseline`` line the
    paired differences to it (of the test return and of the other metrics' final values)."""
    runs = find_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_metric(runs, metric, out / f"{name}_{metric.replace('/', '_')}.png", name) for metric in metrics
    ]
    text = results_table(runs)
    others = [metric for metric in metrics if metric not in ("test/return", "train/return")]
    if others:
        text += f"\nFinal values ({FINAL_VALUE}):\n\n" + metrics_table(runs, others)
    table = out / f"{name}_table.md"
    table.write_text(text)
    differences = write_differences(runs, baseline, out, name, tuple(others)) if baseline else []
    return [*written, table, *write_aggregate(runs, out), *differences]
