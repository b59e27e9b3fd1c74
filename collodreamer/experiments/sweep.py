"""Sweeps: a YAML spec expands into runs (agents x tasks x variants x seeds), each its own run
directory, executed by a local process pool or on a Ray cluster. Rerunning a sweep skips finished
runs and resumes unfinished ones from their checkpoints; a failing run is reported, not fatal.

A spec (see ``configs/experiments/``)::

    name: fig13_states
    agents: [collodreamer, latco, dreamer]
    tasks:                      # a task with its own budget in env frames
      - {task: dmc:cheetah_run, steps: 25000}
    obs: state
    seeds: 2                    # or an explicit list [0, 1, 2]
    presets: [cpu]
    agent_presets:              # presets for one agent's runs only, after the common ones
      collodreamer: [collodreamer_paper]
    overrides: [run.eval_start=5000]
    variants:                   # named override lists (default: one variant "base" with none)
      base: []
      no_dropout: [value.dropout=[]]
    plots:                      # figures made from the runs' logs when the sweep ends
      - {metric: test/return}
    baseline: base              # a variant: every other one's paired differences to it
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from collodreamer.config import (
    ConfigError,
    load_config,
    load_spec_file,
    make_config,
    run_name,
    to_dict,
    uses_pixels,
)
from collodreamer.envs import check_task
from collodreamer.rundir import RunDir, runs_under
from collodreamer.schema import Config
from collodreamer.spec import IMAGE_SIZE
from collodreamer.training.checkpoint import CheckpointError, load_checkpoint
from collodreamer.training.logger import read_metrics

log = logging.getLogger("collodreamer")
SPEC_KEYS = {
    "name",
    "agents",
    "tasks",
    "obs",
    "seeds",
    "presets",
    "agent_presets",
    "overrides",
    "variants",
    "plots",
    "baseline",
}
RUN_BYTES = 2**30  # a run's memory besides its replay: torch, dm_control, the renderer, the networks
# Replay bytes per agent step: images as held in memory, compressed at least 2.4x (the worst paper task,
# quadruped_walk); a state vector with its action and reward, rounded up.
PIXEL_COMPRESSION = 2.4
STATE_STEP_BYTES = 1024


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name (also its directory), and what to train."""

    name: str
    agent: str
    task: str
    obs: str
    seed: int
    steps: int
    variant: str
    presets: tuple[str, ...]
    overrides: tuple[str, ...]

    def config(self) -> Config:
        return make_config(self.presets, self.config_overrides())

    def config_overrides(self) -> list[str]:
        return [
            f"agent={self.agent}",
            f"env.task={self.task}",
            f"env.obs={self.obs}",
            f"seed={self.seed}",
            *self.overrides,
            f"run.steps={self.steps}",
        ]


@dataclass
class Sweep:
    name: str
    runs: list[RunSpec]
    plots: list[dict[str, Any]] = field(default_factory=list)
    baseline: str | None = None


def load_spec(path: Path) -> dict[str, Any]:
    """A spec by path, or by name from ``configs/experiments/``."""
    return load_spec_file(str(path), "experiments", SPEC_KEYS, "sweep spec")


def expand(spec: dict[str, Any]) -> Sweep:
    """The runs of a spec: the full grid agents x tasks x variants x seeds, each config validated."""
    for key in ("name", "agents", "tasks"):
        if key not in spec:
            raise ConfigError(f"sweep spec: '{key}' is required")
    for key in ("agents", "tasks"):
        if not isinstance(spec[key], list) or not spec[key]:
            raise ConfigError(f"sweep spec: '{key}' is a list, got {spec[key]!r}")
    seeds = _seeds(spec.get("seeds", 1))
    variants = spec.get("variants") or {"base": []}
    if not isinstance(variants, dict) or not all(isinstance(v, list) for v in variants.values()):
        raise ConfigError("sweep spec: 'variants' maps each variant name to a list of key=value overrides")
    presets = tuple(spec.get("presets", []))
    agent_presets = spec.get("agent_presets") or {}
    if not isinstance(agent_presets, dict) or not all(isinstance(v, list) for v in agent_presets.values()):
        raise ConfigError("sweep spec: 'agent_presets' maps an agent to a list of presets for its runs only")
    common = tuple(spec.get("overrides", []))
    obs = spec.get("obs", "pixels")
    runs = []
    tasks = [_task(entry) for entry in spec["tasks"]]
    # Seed-major order: a sweep stopped part-way has whole seeds of every agent, task and variant.
    for seed in seeds:
        for task, steps in tasks:
            for variant, extra in variants.items():
                for agent in spec["agents"]:
                    overrides = (
                        (*common, *extra) if steps is None else (*common, *extra, f"run.steps={steps}")
                    )
                    base = [f"agent={agent}", f"env.task={task}", f"env.obs={obs}", f"seed={seed}"]
                    layers = (*presets, *agent_presets.get(agent, []))
                    config = make_config(layers, [*base, *overrides])  # validates every key up front
                    runs.append(
                        RunSpec(
                            name=run_name(config, variant),
                            agent=agent,
                            task=task,
                            obs=obs,
                            seed=seed,
                            steps=config.run.steps,
                            variant=variant,
                            presets=layers,
                            overrides=(*common, *extra),
                        )
                    )
    plots = spec.get("plots") or []
    if not isinstance(plots, list) or not all(isinstance(p, dict) and set(p) == {"metric"} for p in plots):
        raise ConfigError(f"sweep spec: 'plots' is a list of {{metric: NAME}} entries, got {plots!r}")
    baseline = spec.get("baseline")
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"sweep spec: baseline {baseline!r} is none of the variants: {', '.join(variants)}")
    return Sweep(spec["name"], runs, plots, baseline)


def _seeds(seeds: Any) -> list[int]:
    """``seeds: 3`` means seeds 0, 1, 2; a list names them."""
    if _whole(seeds) and seeds > 0:
        return list(range(seeds))
    if isinstance(seeds, list) and seeds and all(_whole(seed) for seed in seeds):
        return seeds
    raise ConfigError(f"sweep spec: 'seeds' is a positive count or a list of seeds, got {seeds!r}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _task(entry: Any) -> tuple[str, int | None]:
    """A ``tasks`` entry, ``dmc:cheetah_run`` or ``{task: dmc:cheetah_run, steps: 25000}``, checked."""
    if isinstance(entry, dict) and set(entry) <= {"task", "steps"} and "task" in entry:
        task, steps = entry["task"], entry.get("steps")
    elif isinstance(entry, str):
        task, steps = entry, None
    else:
        raise ConfigError(
            f"sweep spec: a task is dmc:<domain>_<task>, gym:<id> or {{task: ..., steps: N}}, got {entry!r}"
        )
    check_task(str(task))
    return task, steps


def run_state(run: RunSpec, root: Path) -> str:
    """``done``, ``resume`` or ``new`` for a run directory. A finished run's record without a checkpoint
    (:func:`keep_records`), or a sweep's link to one, is done: never trained into."""
    files = RunDir(root / run.name)
    if _complete(files, run.steps):
        return "done"
    return "resume" if files.checkpoint.exists() else "new"  # resuming reports a damaged checkpoint


def _complete(files: RunDir, steps: int) -> bool:
    """Whether a run trained its ``steps`` env frames and logged its final test: a run stopped between
    its last update and that test has a checkpoint at ``steps`` and is resumed for the test. A run's
    record (its config and metrics kept without a checkpoint, :func:`keep_records`) is complete when
    its metrics hold a test at ``steps`` or later."""
    frames = _frames(files.checkpoint) if files.checkpoint.exists() else steps
    if frames < steps:
        return False
    with contextlib.suppress(OSError):
        return any("test/return" in r and r["step"] >= frames for r in read_metrics(files.metrics))
    return False


def _frames(checkpoint: Path) -> int:
    """The env frames a checkpoint was trained for; -1 when it is missing or damaged."""
    try:
        return load_checkpoint(checkpoint)["counters"]["env_frames"]
    except (CheckpointError, FileNotFoundError):
        return -1


def config_hash(config: Config) -> str:
    """A fingerprint of a resolved configuration (seed and budget included): two runs with the same
    one train the same thing."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_runs(folders: list[Path], wanted: set[str]) -> dict[str, Path]:
    """Finished runs and kept records anywhere under ``folders`` (e.g. ``runs/sweeps`` and
    ``results/fig13_pixels``) whose resolved configuration hashes to one of ``wanted``, by that hash;
    links (shared runs) are left out."""
    found: dict[str, Path] = {}
    paths = sorted({path for folder in folders for path in Path(folder).rglob("config.yaml")})
    for config_path in paths:
        run_dir = config_path.parent
        with contextlib.suppress(ConfigError, OSError, ValueError):
            config = load_config(config_path)
            key = config_hash(config)
            wanted_here = key in wanted and key not in found and not run_dir.is_symlink()
            if wanted_here and _complete(RunDir(run_dir), config.run.steps):
                found[key] = run_dir
    return found


def shared_sources(runs: list[RunSpec], root: Path, share_from: Sequence[Path] = ()) -> dict[str, Path]:
    """Runs of this sweep that need no training of their own, with the run that trains the same
    resolved configuration: a finished run or kept record under one of ``share_from`` (e.g.
    ``runs/sweeps``, ``results/``), or an earlier run of this sweep. A run directory of its own (a run
    already started) is never shared."""
    keys = {run.name: config_hash(run.config()) for run in runs}
    done = finished_runs(list(share_from), set(keys.values()))
    first: dict[str, Path] = {}
    shared = {}
    for run in runs:
        path, key = root / run.name, keys[run.name]
        source = done.get(key) or first.get(key)
        if source is not None and source.resolve() != path.resolve() and not path.exists():
            shared[run.name] = source
        else:
            first.setdefault(key, path)
    return shared


def runs_to_train(runs: list[RunSpec], root: Path, shared: dict[str, Path]) -> list[RunSpec]:
    """The runs under ``root`` that still need training: neither shared nor finished."""
    return [run for run in runs if run.name not in shared and run_state(run, root) != "done"]


def keep_records(paths: list[Path], out: Path) -> list[Path]:
    """Copy the finished runs under ``paths`` (run directories or sweep roots) to ``out`` as records: each
    run's config, metrics and report pictures (no checkpoint, no replay), and each sweep's
    ``sweep.yaml``. A record is a finished run to :func:`shared_sources`: a later sweep on a new machine
    (``--share-from out``) links it instead of training it again. Returns the records written."""
    kept = []
    for path in map(Path, paths):
        for run_dir in runs_under(path, lambda run: run.is_run()):
            files, record = RunDir(run_dir), RunDir(out / run_dir.name)
            if record.path.resolve() == files.path.resolve():
                continue  # the sweep links this record already
            with contextlib.suppress(ConfigError, OSError, ValueError):
                if not _complete(files, load_config(files.config).run.steps):
                    continue
                record.path.mkdir(parents=True, exist_ok=True)
                for source, target in ((files.config, record.config), (files.metrics, record.metrics)):
                    shutil.copyfile(source, target)
                if files.report.is_dir():
                    shutil.copytree(files.report, record.report, dirs_exist_ok=True)
                kept.append(record.path)
        if (path / "sweep.yaml").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / "sweep.yaml", out / "sweep.yaml")
    return kept


def memory_needed(run: RunSpec) -> int:
    """Bytes a run may hold at most: its replay, ``min(replay.capacity, run.steps)`` env frames in
    memory, plus :data:`RUN_BYTES`."""
    config = run.config()
    steps = min(config.replay.capacity, config.run.steps) // config.env.action_repeat
    if uses_pixels(config.env):
        step_bytes = IMAGE_SIZE**2 * 3 / PIXEL_COMPRESSION + STATE_STEP_BYTES
    else:
        step_bytes = STATE_STEP_BYTES
    return int(steps * step_bytes) + RUN_BYTES


def available_memory() -> int:
    """Bytes of memory available to new processes (Linux's MemAvailable, else the free pages)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(runs: list[RunSpec], workers: int, available: int) -> None:
    """Refuse (one-line :class:`ConfigError`) a local sweep whose ``workers`` largest runs at once may
    need more than ``available`` bytes: a machine out of memory kills runs at random."""
    needed = sum(sorted((memory_needed(run) for run in runs), reverse=True)[:workers])
    if needed > available:
        gib = 2**30
        raise ConfigError(
            f"{min(workers, len(runs))} runs at once may need {needed / gib:.1f} GiB of memory, "
            f"{available / gib:.1f} GiB are available: lower --workers or replay.capacity (env frames kept "
            "in memory)"
        )


def run_command(run: RunSpec, root: Path) -> list[str]:
    base = [sys.executable, "-m", "collodreamer", "train"]
    run_dir = root / run.name
    if run_state(run, root) == "resume":
        return [*base, "--resume", str(run_dir), f"run.steps={run.steps}"]
    presets = [item for name in run.presets for item in ("--preset", name)]
    return [*base, *presets, "--run-dir", str(run_dir), *run.config_overrides()]


def _die_with_parent() -> None:
    """In a child process (Linux): receive SIGTERM when the sweep that started it dies, so a killed
    sweep leaves no orphaned runs holding their run directories."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RunningRuns:
    """The training processes a local sweep has running. Stopping the sweep (Ctrl-C, SIGTERM) starts
    no further run and sends each running one SIGTERM (it saves a checkpoint and exits), then waits
    for them: a stopped sweep resumes where it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen] = set()
        self._stopping = False

    def start(self, command: list[str], **options: Any) -> subprocess.Popen | None:
        """``command`` started (``subprocess.Popen`` options), or None once the sweep is stopping."""
        with self._lock:
            if self._stopping:
                return None
            process = subprocess.Popen(command, **options)
            self._processes.add(process)
            return process

    def ended(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            processes = list(self._processes)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()


def execute(
    command: list[str], run_dir: str, threads: int, running: RunningRuns | None = None
) -> tuple[int, str]:
    """Run one training command to its end, its output going to the run's ``train.log`` as it comes;
    (exit code, last line of that output: the error of a failed run). Used by both backends; the
    local one passes its ``running`` runs, which a stopped sweep stops."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log.info("run %s started", Path(run_dir).name)
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    environment = {**os.environ, **threads_env, "CI": "1", "PYTHONUNBUFFERED": "1"}
    path = RunDir(run_dir).train_log
    with open(path, "a") as log_file:
        log_file.write(f"$ {shlex.join(command)}\n")
        log_file.flush()
        start = log_file.tell()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        options = {"stdout": log_file, "stderr": subprocess.STDOUT, "env": environment, "preexec_fn": preexec}
        running = running or RunningRuns()
        process = running.start(command, **options)
        if process is None:
            return 143, "not started: the sweep was stopped"
        try:
            code = process.wait()
        finally:
            running.ended(process)
    with open(path, errors="replace") as log_file:
        log_file.seek(start)
        lines = [line for line in log_file.read().splitlines() if line.strip()]
    return code, (lines[-1] if lines else "")


def run_sweep(
    sweep: Sweep,
    root: Path,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    share_from: Sequence[Path] = (),
) -> dict[str, str]:
    """Run every unfinished run of ``sweep`` under ``root``; returns each run's outcome
    (``done``, ``skipped``, ``shared: <run dir>`` or ``failed: <error>``). A run whose resolved
    configuration another run trains (:func:`shared_sources`) is not trained again."""
    shared = shared_sources(sweep.runs, root, share_from)
    todo = runs_to_train(sweep.runs, root, shared)
    workers = workers or os.cpu_count() or 1
    if backend == "local":
        check_memory(todo, workers, available_memory())
    root.mkdir(parents=True, exist_ok=True)
    for name, source in shared.items():
        if not (root / name).is_symlink():
            (root / name).symlink_to(os.path.relpath(source, root))
        log.info("run %s is the same configuration as %s: linked to it, not trained again", name, source)
    (root / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "name": sweep.name,
                "runs": [
                    r.__dict__ | {"presets": list(r.presets), "overrides": list(r.overrides)}
                    for r in sweep.runs
                ],
            },
            sort_keys=False,
        )
    )
    outcomes = {run.name: "skipped" for run in sweep.runs if run not in todo}
    outcomes |= {name: f"shared: {source}" for name, source in shared.items()}
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo) or 1)))
    log.info(
        "sweep %s: %d runs, %d finished already, %d to run on %s",
        sweep.name,
        len(sweep.runs),
        len(outcomes),
        len(todo),
        backend,
    )
    jobs = [(run, run_command(run, root), str(root / run.name)) for run in todo]

    def record(run: RunSpec, code: int, error: str) -> None:
        outcomes[run.name] = "done" if code == 0 else f"failed: {error or f'exit code {code}'}"
        ended = len(outcomes) - (len(sweep.runs) - len(todo))
        if code == 0:
            log.info("run %s finished (%d of %d)", run.name, ended, len(todo))
        else:
            log.error("run %s failed: %s (log: %s)", run.name, error, RunDir(root / run.name).train_log)

    if backend == "ray":
        _run_ray(jobs, address, threads, gpus_per_run, record)
    elif backend == "local":
        running = RunningRuns()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(execute, command, run_dir, threads, running): run
                for run, command, run_dir in jobs
            }
            try:
                for future in as_completed(futures):
                    record(futures[future], *future.result())
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: no further run, the running ones checkpoint
                pool.shutdown(wait=False, cancel_futures=True)
                running.stop()
                raise
    else:
        raise ConfigError(f"unknown sweep backend '{backend}'; choices: local, ray")
    return {run.name: outcomes[run.name] for run in sweep.runs}


def _run_ray(jobs: list, address: str | None, threads: int, gpus: float, record: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'collodreamer[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=threads, num_gpus=gpus)(execute)
    try:
        pending = {remote.remote(command, run_dir, threads): run for run, command, run_dir in jobs}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            record(pending.pop(ready), *ray.get(ready))
    finally:
        if started:
            ray.shutdown()
