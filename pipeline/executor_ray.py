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

from .executor_local import Events, Task, run_jobs_locally
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


def run_task(spec: JobSpec, data: CategoryData, cpus: float) -> JobOutput:
    """The body of one Ray task: torch threads from the task's CPU share, then the job."""
    torch.set_num_threads(max(1, int(cpus)))  # not all the node's cores: other tasks share them
    # Ray runs tasks with SIGINT ignored or handled by itself; a job never needs it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return compute_job(spec, data)


def run_jobs_on_ray(tasks: list[Task], load: Callable[[JobSpec], CategoryData], events: Events, options) -> None:
    """Train the ``tasks`` without a checkpoint as Ray tasks (``options``: the grid's
    ``Settings``, for ``address``, ``cpus_per_job``, ``gpus_per_job``, ``max_concurrent_jobs``),
    then re-evaluate the others here (they are cheap: ``run_jobs_locally``). ``events`` as
    ``executor_local``: each output on the driver in the order the jobs finish."""
    to_train = [t.spec for t in tasks if t.checkpoint is None]
    if to_train:  # Ray first: an unreachable --address fails before any image is decoded
        events.log(f"sending {len(to_train)} job(s) to Ray ...")
        ray, started = connect(options.address)
        try:
            run_on_cluster(ray, to_train, load, events, options)
        finally:
            if started:
                ray.shutdown()
    run_jobs_locally([t for t in tasks if t.checkpoint is not None], load, events)


def run_on_cluster(ray, specs: list[JobSpec], load: Callable[[JobSpec], CategoryData], events: Events,
                   options) -> None:
    """Submit ``specs`` (at most a limit in flight), report each as it finishes; Ctrl-C cancels
    the tasks still outstanding and re-raises."""
    resources = ray.cluster_resources()
    cpus, gpus = options.cpus_per_job, options.gpus_per_job
    if gpus is None:  # one GPU per job where the cluster has GPUs
        gpus = 1 if resources.get("GPU", 0) > 0 else 0
    check_fits(resources, cpus, gpus)
    remote = ray.remote(run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES)
    # Jobs in flight: by default twice what the cluster runs at once, so that the next jobs
    # are queued without every category being decoded and held up front.
    limit = options.max_concurrent_jobs or max(1, 2 * slots(resources, cpus, gpus))
    queue = list(specs)
    pending: dict = {}  # ObjectRef -> (spec, data)
    shared = SharedData(ray, load)
    bar = tqdm(total=len(specs), desc="jobs", unit="job", leave=False, disable=not specs[0].train.progress)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                spec = queue.pop(0)
                ref, data = shared.get(spec)
                if isinstance(ref, UserError):
                    events.failure(spec, ref, None)
                    bar.update()
                    continue
                pending[remote.remote(spec, ref, cpus)] = (spec, data)
            if pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                report(ray, done[0], *pending.pop(done[0]), events)
                bar.update()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


class SharedData:
    """Each (category, seed) decoded once on the driver and put in the object store; only the
    one being submitted is held (the tasks are category-major)."""

    def __init__(self, ray, load: Callable[[JobSpec], CategoryData]):
        self.ray, self.load = ray, load
        self.key, self.value = None, None

    def get(self, spec: JobSpec) -> tuple:
        """(object ref, data) of ``spec``'s category, or (the UserError loading it raised, None)."""
        key = (spec.category, spec.train.seed)
        if key != self.key:
            self.key, self.value = key, None  # the previous category is no longer needed here
            try:
                data = self.load(spec)
                self.value = (self.ray.put(data), data)
            except UserError as e:
                self.value = (e, None)
        return self.value


def report(ray, ref, spec: JobSpec, data: CategoryData, events: Events) -> None:
    """The finished task ``ref``: its output, or its failure."""
    try:
        output = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the job raised: report its own exception
        cause = getattr(e, "cause", None) or e
        events.failure(spec, cause, None if isinstance(cause, UserError) else str(e))
    except ray.exceptions.RayError as e:  # worker died twice, node lost, ...
        events.failure(spec, e, traceback.format_exc())
    else:
        events.output(spec, data, output)
