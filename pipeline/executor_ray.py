"""Run a grid's jobs as Ray tasks (``python -m pipeline run --executor ray``).

One job = one task (train, evaluate, build the row and the checkpoint bytes). Each
category (per seed: the val split depends on it) is decoded once on the driver and put in
the object store, so workers need no copy of the dataset folder. Tasks write nothing: the
driver writes each finished job's checkpoint, side files and row as it arrives
(``ray.wait``), so the CSV cache, resume and "delete the CSV to retrain" behave exactly as
in the local loop. Ray is imported here only, and this module only by the ray executor.
"""
from __future__ import annotations

import signal
import socket
import threading
import traceback
from collections.abc import Callable

import torch
from tqdm import tqdm

from models.errors import ConfigError, UserError

from .job import CategoryData, JobOutput, JobSpec, compute_job

# A worker killed mid-job (OOM killer, preempted node) is retried once; an exception of the
# job itself is not retried (it would fail the same way).
MAX_RETRIES = 1


def connect(address: str | None):
    """Ray, started locally (``address`` None) or joined (``auto``, ``ray://host:port``);
    returns (ray, started_here). An unreachable address is a ConfigError."""
    import ray  # lazily: the local executor never imports Ray

    check_reachable(address)
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        return ray, False
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        # ray.init makes SIGTERM exit at once; the command line's handler ends the run as Ctrl-C
        # does (the tasks cancelled, one message), so it is put back.
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError ... depending on the address
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r} ({why}); start it with "
                          "`ray start --head` or pass another --address (none starts a local Ray).") from None
    return ray, True


def check_reachable(address: str | None) -> None:
    """A HOST:PORT address that refuses connections is a ConfigError now (ray.init would retry
    it for minutes). None and 'auto' are left to ray.init, which fails fast for them."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT; pass one of those "
                          "(or none to start a local Ray).")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); start it with "
                          "`ray start --head` or pass another --address (none starts a local Ray).") from None


def check_fits(resources: dict, cpus_per_job: float, gpus_per_job: float) -> None:
    """A job larger than the whole cluster would wait forever: a ConfigError instead."""
    for what, need, flag in (("CPU", cpus_per_job, "--cpus-per-job"), ("GPU", gpus_per_job, "--gpus-per-job")):
        have = resources.get(what, 0)
        if need > have:
            raise ConfigError(f"{flag} {need:g} but the Ray cluster has {have:g} {what}s in all; pass {flag} "
                              f"{have:g} or less, or add nodes with {what}s.")


def slots(resources: dict, cpus_per_job: float, gpus_per_job: float) -> int:
    """How many jobs the cluster's resources run at once."""
    n = resources.get("CPU", 1) / cpus_per_job
    if gpus_per_job > 0:
        n = min(n, resources.get("GPU", 0) / gpus_per_job)
    return int(n)


def run_task(job: Callable, spec: JobSpec, data: CategoryData, kind: str, cpus: float) -> JobOutput:
    """The body of one task: torch threads from the task's CPU share, then the job."""
    torch.set_num_threads(max(1, int(cpus)))  # not all the node's cores: other tasks share them
    # Ray runs tasks with SIGINT ignored or handled by itself; a job never needs it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return job(spec, data, kind=kind)


def run_jobs_on_ray(specs: list[JobSpec], load: Callable[[JobSpec], CategoryData], *, address: str | None = None,
                    gpus_per_job: float | None = None, cpus_per_job: float = 1, max_concurrent: int | None = None,
                    category_kind: Callable[[JobSpec], str], on_output: Callable[[JobSpec, CategoryData, JobOutput],
                                                                                 None],
                    on_failure: Callable[[JobSpec, BaseException, str | None], None],
                    progress: bool = True) -> None:
    """Run ``specs`` as Ray tasks; ``on_output(spec, data, output)`` for each finished job on the
    driver (in the order they finish), ``on_failure(spec, error, traceback_text)`` for each
    failed one. ``load(spec)`` decodes a category on the driver (it may raise a UserError:
    that category's jobs fail). Ctrl-C cancels the tasks still outstanding and re-raises."""
    job = compute_job  # looked up at call time: tests patch this module's compute_job
    ray, started = connect(address)
    try:
        resources = ray.cluster_resources()
        if gpus_per_job is None:  # one GPU per job where the cluster has GPUs
            gpus_per_job = 1 if resources.get("GPU", 0) > 0 else 0
        check_fits(resources, cpus_per_job, gpus_per_job)
        remote = ray.remote(run_task).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job,
                                              max_retries=MAX_RETRIES)
        # Jobs in flight: by default twice what the cluster runs at once, so that the next jobs
        # are queued without every category being decoded and held up front.
        limit = max_concurrent or max(1, 2 * slots(resources, cpus_per_job, gpus_per_job))
        queue = list(specs)
        pending: dict = {}  # ObjectRef -> (spec, data)
        refs: dict = {}  # (category, seed) -> (object ref of the data, data) of the category being submitted
        bar = tqdm(total=len(specs), desc="jobs", unit="job", leave=False, disable=not progress)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    spec = queue.pop(0)
                    key = (spec.category, spec.train.seed)
                    if key not in refs:
                        refs.clear()  # specs are category-major: the previous category is no longer needed here
                        try:
                            data = load(spec)
                            refs[key] = (ray.put(data), data)
                        except UserError as e:
                            refs[key] = (e, None)
                    ref, data = refs[key]
                    if isinstance(ref, UserError):
                        on_failure(spec, ref, None)
                        bar.update()
                        continue
                    pending[remote.remote(job, spec, ref, category_kind(spec), cpus_per_job)] = (spec, data)
                if not pending:
                    continue
                done, _ = ray.wait(list(pending), num_returns=1)
                spec, data = pending.pop(done[0])
                try:
                    output = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # the job raised: report its own exception
                    cause = getattr(e, "cause", None) or e
                    on_failure(spec, cause, None if isinstance(cause, UserError) else str(e))
                except ray.exceptions.RayError as e:  # worker died twice, node lost, ...
                    on_failure(spec, e, traceback.format_exc())
                else:
                    on_output(spec, data, output)
                bar.update()
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
