"""Metrics to ``metrics.jsonl`` (one JSON object per event, keyed by env frames), TensorBoard and, with
``run.wandb``, Weights & Biases; report pictures, test videos and the config beside them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import yaml
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from collodreamer.averages import Averages
from collodreamer.config import ConfigError, to_dict
from collodreamer.files import write_atomic
from collodreamer.rundir import RunDir
from collodreamer.schema import Config

log = logging.getLogger("collodreamer")


def import_wandb() -> Any:
    """The ``wandb`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "run.wandb=true needs Weights & Biases: pip install 'collodreamer[wandb]'"
        ) from None
    return wandb


def start_wandb(run_dir: Path, config: Config) -> Any:
    """A W&B run for ``run_dir`` under ``run.wandb_project``, holding the config; a resumed run goes on
    in the same W&B run (its id is kept in ``RUN_DIR/wandb-run-id``). Metrics are plotted against
    ``env_frames``, so records logged again after a resume do not go back in W&B's own step."""
    wandb = import_wandb()
    id_path = RunDir(run_dir).wandb_run_id
    if not id_path.exists():
        run_id = uuid.uuid4().hex[:16].encode()
        write_atomic(id_path, lambda handle: handle.write(run_id))
    run = wandb.init(
        project=config.run.wandb_project,
        dir=str(run_dir),
        id=id_path.read_text().strip(),
        name=Path(run_dir).name,
        config=to_dict(config),
        resume="allow",
        allow_val_change=True,  # a resume may change settings (run.steps, learning rates)
    )
    run.define_metric("env_frames")
    run.define_metric("*", step_metric="env_frames")
    return run


def _quiet_tensorboard_thread(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread fails on a full disk with a traceback of its own; its error comes
    again in the main thread, as a one-line error naming the folder, so the traceback goes."""
    if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _default_excepthook(args)


_default_excepthook = threading.excepthook


class Logger:
    """Collects scalars between writes; averages repeated ones (e.g. per-update losses). Every record
    carries ``elapsed_s``, the run's wall-clock seconds so far as ``clock`` tells them. The config is
    written to TensorBoard (text) when the logger starts, at ``step`` env frames."""

    def __init__(self, run_dir: Path, clock: Callable[[], float], config: Config, step: int) -> None:
        self.path = RunDir(run_dir).metrics
        self.clock = clock
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (line-buffered: a kill loses no line)
        threading.excepthook = _quiet_tensorboard_thread
        self._tensorboard_dir = RunDir(run_dir).tensorboard
        with self._naming_tensorboard():
            self._tensorboard = SummaryWriter(str(self._tensorboard_dir))
        self._averages = Averages()
        text = yaml.safe_dump(to_dict(config), sort_keys=False)
        # indented: a Markdown code block, as TensorBoard renders text
        with self._naming_tensorboard():
            self._tensorboard.add_text("config", "\n".join("    " + line for line in text.splitlines()), step)
        self._wandb = start_wandb(run_dir, config) if config.run.wandb else None

    def add(self, metrics: dict[str, float]) -> None:
        """Collect one value of each metric, averaged at the next :meth:`write`."""
        self._averages.add(metrics)

    def write(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Write the averages collected so far (and ``extra``) at ``step`` env frames."""
        record: dict[str, Any] = {"step": step}
        averages = self._averages.take()
        record.update({key: averages[key] for key in sorted(averages)})
        record.update(extra or {})
        self._emit(record)

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Write ``values`` alone at ``step``, leaving the collected averages for the next write."""
        self._emit({"step": step, **values})

    @contextlib.contextmanager
    def _naming_tensorboard(self) -> Iterator[None]:
        """TensorBoard's write errors (its writer thread's, raised again here) name its folder."""
        try:
            yield
        except OSError as error:
            raise OSError(error.errno, error.strerror or str(error), str(self._tensorboard_dir)) from None

    def _emit(self, record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(self.clock(), 3)
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from None
        scalars = {
            key: value
            for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and math.isfinite(value)
        }
        with self._naming_tensorboard():
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, record["step"])
        if self._wandb is not None:
            self._wandb.log({"env_frames": record["step"], **scalars})

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB image ``[H, W, 3]`` (uint8) to TensorBoard."""
        with self._naming_tensorboard():
            self._tensorboard.add_image(tag, image, step, dataformats="HWC")

    def animation(self, tag: str, frames: np.ndarray, step: int, fps: int = 15) -> None:
        """Frames ``[T, H, W, 3]`` (uint8) to TensorBoard as an animated GIF, which its images tab plays
        (what ``add_video`` writes, without its moviepy dependency)."""
        buffer = io.BytesIO()
        imageio.mimsave(buffer, list(frames), format="GIF", duration=1 / fps, loop=0)
        height, width = frames.shape[1:3]
        gif = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
        with self._naming_tensorboard():
            self._tensorboard.file_writer.add_summary(
                Summary(value=[Summary.Value(tag=tag, image=gif)]), step
            )

    def report(self, images: dict[str, np.ndarray], video: np.ndarray | None, step: int) -> None:
        """A test's report (``run.report``) to TensorBoard: its pictures as ``report/<name>``, and its
        prediction video, every other frame, as ``report/prediction_video``."""
        for name, image in images.items():
            self.image(f"report/{name}", image, step)
        if video is not None:
            self.animation("report/prediction_video", video[::2], step)

    def test_video(self, path: Path, step: int) -> None:
        """A test video (mp4) to W&B, when it tracks the run (TensorBoard has the curves only)."""
        if self._wandb is not None:
            wandb = import_wandb()
            self._wandb.log({"env_frames": step, "test/video": wandb.Video(str(path), format="mp4")})

    def close(self) -> None:
        """Close every file, even when one fails (the last failure is raised, naming its file)."""
        with contextlib.ExitStack() as stack:
            if self._wandb is not None:
                stack.callback(self._wandb.finish)
            stack.callback(self._close_tensorboard)
            stack.callback(self._close_metrics)

    def _close_tensorboard(self) -> None:
        with self._naming_tensorboard():
            self._tensorboard.close()

    def _close_metrics(self) -> None:
        try:
            self._file.close()
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``: JSON objects with a numeric ``step``. Any other line (one
    cut short by a kill or a full disk, stray bytes) is ignored."""
    records = []
    for line in Path(path).read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool):
            records.append(record)
    return records


def keep_metrics_until(path: Path, step: int) -> tuple[list[dict[str, Any]], int]:
    """Rewrite ``metrics.jsonl`` (atomically) with only its records up to ``step`` env frames, where a
    resumed run goes on from: later ones, written after the state it resumes, it writes again. Lines
    that are no records go too, so a line cut short cannot swallow the next record. Returns the records
    kept and the number of lines removed."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    lines = data.splitlines()
    records = [record for record in read_metrics(path) if record["step"] <= step]
    if len(records) < len(lines) or not data.endswith(b"\n"):
        write_metrics(path, records)
    return records, len(lines) - len(records)


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` at ``path`` (atomically) with ``records``."""
    text = "".join(json.dumps(record) + "\n" for record in records).encode()
    write_atomic(Path(path), lambda handle: handle.write(text))


def rebuilt_returns(records: list[dict[str, Any]], loaded: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The ``train/return`` records of the episodes ``loaded`` (env frames, return), oldest first, after
    the last one ``records`` hold (a kill between saving an episode and recording it)."""
    returns = [record for record in records if "train/return" in record]
    recorded = int(returns[-1].get("train/episodes", len(returns))) if returns else 0
    step = int(returns[-1]["step"]) if returns else 0
    rebuilt = []
    for frames, episode_return in loaded[recorded:]:
        step += frames
        rebuilt.append(
            {
                "step": step,
                "train/return": episode_return,
                "train/episode_length": frames,
                "train/episodes": recorded + len(rebuilt) + 1,
            }
        )
    return rebuilt


def repair_metrics(path: Path, step: int, loaded: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """``metrics.jsonl`` as a run resumed at ``step`` env frames goes on from: cut back to ``step`` (what
    was logged later is logged again, tests included), with the returns of the episodes ``loaded``
    that a kill left unrecorded. Returns its records."""
    records, removed = keep_metrics_until(path, step)
    if removed:
        log.info("%s: removed %d lines past %d env frames, or unreadable", path, removed, step)
    rebuilt = rebuilt_returns(records, loaded)
    if rebuilt:
        log.info("%s: recorded again the returns of %d episodes a kill left unrecorded", path, len(rebuilt))
        records = sorted(records + rebuilt, key=lambda record: record["step"])
        write_metrics(path, records)
    return records
