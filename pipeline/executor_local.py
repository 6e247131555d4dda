"""Run a grid's jobs in this process, one after another (``--executor local``, the default).

An executor takes the grid's tasks (``Task``: a job, and the checkpoint it is re-evaluated
from, or None to train it), a ``load`` that decodes a task's category, and the grid's
``Events``: it says when a job starts, hands each finished job's output to
``events.output`` (which writes it) and each failure to ``events.failure``; it writes
nothing itself. ``executor_ray.run_jobs_on_ray`` has the same signature.
"""
from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from models.errors import CheckpointError, DatasetError, UserError

from .job import CategoryData, JobOutput, JobSpec, compute_job, evaluate_checkpoint


@dataclass(frozen=True)
class Task:
    """One job of a grid's plan and how it runs: trained, or re-evaluated from ``checkpoint``."""

    spec: JobSpec
    checkpoint: Path | None = None


class Events(Protocol):
    """What an executor reports to the grid (``grid.Recorder``)."""

    def log(self, message: str) -> None: ...
    def start(self, spec: JobSpec, note: str) -> None: ...
    def output(self, spec: JobSpec, data: CategoryData, output: JobOutput) -> None: ...
    def failure(self, spec: JobSpec, error: BaseException, traceback_text: str | None) -> None: ...


def run_jobs_locally(tasks: list[Task], load: Callable[[JobSpec], CategoryData], events: Events,
                     options=None) -> None:
    """Run ``tasks`` here, in order; a category is decoded once for its consecutive tasks (the
    grid orders them category-major, then seed). A failing job is reported and the others go
    on; ``options`` (the grid's ``Settings``) are not needed here."""
    data, data_key, data_error = None, None, None
    for task in tasks:
        spec = task.spec
        try:
            if data_key != (spec.category, spec.train.seed):  # release the previous data before loading the next
                data, data_error = None, None
                gc.collect()
                data_key = (spec.category, spec.train.seed)
                try:
                    data = load(spec)
                except UserError as e:
                    data_error = str(e)
            if data_error is not None:
                raise DatasetError(data_error)
            output = run_task(task, data, events)
        except UserError as e:
            events.failure(spec, e, None)
            continue
        except Exception as e:  # a bug: report it in one line, keep the traceback text, go on
            events.failure(spec, e, traceback.format_exc())
            del e
            gc.collect()
            continue
        events.output(spec, data, output)
        output = None
    data = None
    gc.collect()


def run_task(task: Task, data: CategoryData, events: Events) -> JobOutput:
    """One task: re-evaluated from its checkpoint, or trained when it has none or the
    checkpoint cannot be used."""
    if task.checkpoint is not None:
        events.start(task.spec, f": evaluating from checkpoint {task.checkpoint} ...")
        try:
            return evaluate_checkpoint(task.spec, data, task.checkpoint)
        except CheckpointError as e:
            events.start(task.spec, f": cannot use its checkpoint ({e}); training instead.")
    events.start(task.spec, " ...")
    return compute_job(task.spec, data)
