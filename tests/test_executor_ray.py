"""The Ray executor: the same rows as the local loop, a killed worker retried, reruns send
nothing, an unreachable cluster is exit 2 (a real local Ray with 2 CPUs: every test is slow)."""
import os
import signal
import sys

import pytest

ray = pytest.importorskip("ray")

import pipeline.executor_ray  # noqa: E402
import pipeline.grid  # noqa: E402
import pipeline.job  # noqa: E402
from helpers import make_tiny_mvtec, other_runs_files, tiny_grid  # noqa: E402
from pipeline.__main__ import main  # noqa: E402
from pipeline.evaluate import METRIC_NAMES  # noqa: E402
from pipeline.results import read_results  # noqa: E402

pytestmark = pytest.mark.slow

# On a loaded 2-core machine Ray's agents can take over a minute to start: wait for them rather than
# fail the setup (set before any ray.init, here or in a subprocess, reads them).
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

# The tasks below are defined in this module, which Ray workers cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """One grid of the four tiny models, run locally and on Ray."""
    tmp = tmp_path_factory.mktemp("ray")
    root = make_tiny_mvtec(tmp / "data", categories=("widget",))
    local = tiny_grid(root, tmp / "local.csv", tmp / "local")
    remote = tiny_grid(root, tmp / "ray.csv", tmp / "ray", executor="ray")
    return root, tmp, local, remote


def test_ray_rows_equal_the_local_rows(runs):
    root, tmp, local, remote = runs
    assert len(local) == len(remote) == 4 and not remote.attrs["failures"] and remote.attrs["trained"] == 4
    for (_, a), (_, b) in zip(local.iterrows(), remote.iterrows()):
        assert (a["model"], a["config_hash"], a["train_hash"]) == (b["model"], b["config_hash"], b["train_hash"])
        assert a["category_type"] == b["category_type"]
        for name in [*METRIC_NAMES, "train_loss", "val_loss", "params", "n_test"]:
            if isinstance(a[name], float):
                assert b[name] == pytest.approx(a[name], abs=1e-6, nan_ok=True), name
            else:
                assert a[name] == b[name], name
    # The driver wrote the checkpoints and side files, where the local run writes them.
    for _, b in remote.iterrows():
        assert (tmp / "ray" / "ck" / "data" / "widget" / f"{b['model']}-{b['train_hash']}.pt").is_file()
        assert (tmp / "ray.runs" / "data" / "widget" / f"{b['model']}-{b['config_hash']}.scores.npz").is_file()


def test_rerun_sends_nothing(runs, monkeypatch):
    root, tmp, _, _ = runs
    before = (tmp / "ray.csv").read_bytes()
    monkeypatch.setattr(pipeline.executor_ray, "connect", lambda *a, **k: pytest.fail("started Ray for a rerun"))
    df = tiny_grid(root, tmp / "ray.csv", tmp / "ray", executor="ray")
    assert df.attrs["ran"] == 0 and len(df) == 4
    assert (tmp / "ray.csv").read_bytes() == before


def kill_once(marker):
    """A task body that SIGKILLs its worker the first time it runs (``marker`` remembers it did)."""
    def task(spec, data, cpus):
        if spec.model == "cae" and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return pipeline.job.compute_job(spec, data)
    return task


def test_a_killed_worker_is_retried_and_every_row_written(cluster, tmp_path, monkeypatch):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    marker = tmp_path / "killed"
    monkeypatch.setattr(pipeline.executor_ray, "run_task", kill_once(str(marker)))
    df = tiny_grid(root, tmp_path / "r.csv", tmp_path, models=["cae", "vae"], executor="ray")
    assert marker.exists()  # the worker was killed once ...
    assert not df.attrs["failures"] and sorted(read_results(tmp_path / "r.csv")["model"]) == ["cae", "vae"]


def test_a_failing_job_is_reported_and_the_others_go_on(cluster, tmp_path, monkeypatch):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    monkeypatch.setattr(pipeline.executor_ray, "run_task", fail_vae)
    df = tiny_grid(root, tmp_path / "r.csv", tmp_path, models=["cae", "vae"], executor="ray")
    assert [(f["model"], f["error"]) for f in df.attrs["failures"]] == [("vae", "vae is broken; fix it.")]
    assert list(read_results(tmp_path / "r.csv")["model"]) == ["cae"]


def fail_vae(spec, data, cpus):
    if spec.model == "vae":
        from models.errors import ConfigError
        raise ConfigError("vae is broken; fix it.")
    return pipeline.job.compute_job(spec, data)


def test_unreachable_address_is_exit_2_before_any_data(tmp_path, monkeypatch, capsys):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data read"))
    code = main(["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--min-steps", "0",
                 "--image-size", "32", "--results-csv", str(tmp_path / "r.csv"),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--executor", "ray", "--address", "127.0.0.1:1",
                 "--no-progress", "--set", "cae.widths=[8,16]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot reach the Ray cluster at '127.0.0.1:1'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "r.csv").exists()


def test_local_executor_does_not_import_ray():
    import subprocess
    code = ("import sys, pipeline.__main__, pipeline.grid, pipeline.job; "
            "assert 'ray' not in sys.modules and 'pipeline.executor_ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def kill_always(spec, data, cpus):
    if spec.model == "cae":
        os.kill(os.getpid(), signal.SIGKILL)
    return pipeline.job.compute_job(spec, data)


def test_a_job_whose_worker_dies_twice_fails_and_the_others_go_on(cluster, tmp_path, monkeypatch):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    monkeypatch.setattr(pipeline.executor_ray, "run_task", kill_always)
    df = tiny_grid(root, tmp_path / "r.csv", tmp_path, models=["cae", "vae"], executor="ray")
    assert [f["model"] for f in df.attrs["failures"]] == ["cae"]
    assert "WorkerCrashedError" in df.attrs["failures"][0]["error"]
    assert list(read_results(tmp_path / "r.csv")["model"]) == ["vae"]


def test_ctrl_c_cancels_outstanding_tasks_and_keeps_finished_rows(cluster, tmp_path, monkeypatch, capsys):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    real_append, cancelled = pipeline.grid.append_row, []

    def append_then_interrupt(*a, **k):  # Ctrl-C right after the first row is written
        real_append(*a, **k)
        raise KeyboardInterrupt

    real_cancel = ray.cancel
    monkeypatch.setattr(pipeline.grid, "append_row", append_then_interrupt)
    monkeypatch.setattr(ray, "cancel", lambda ref, **k: (cancelled.append(ref), real_cancel(ref, **k)))
    code = main(["run", "--data-root", str(root), "--epochs", "1", "--min-steps", "0", "--image-size", "32",
                 "--no-progress", "--results-csv", str(tmp_path / "r.csv"), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--executor", "ray", "--max-concurrent-jobs", "2", "--set", "cae.widths=[8,16]",
                 "--set", "vae.widths=[8,16]", "--models", "cae", "vae", "vae_grf"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert len(read_results(tmp_path / "r.csv")) == 1 and len(cancelled) == 1


@pytest.mark.parametrize("flag, value", [("--gpus-per-job", "1"), ("--cpus-per-job", "4")])
def test_a_job_larger_than_the_cluster_is_exit_2(cluster, tmp_path, capsys, flag, value):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    code = main(["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--min-steps", "0",
                 "--image-size", "32", "--results-csv", str(tmp_path / "r.csv"), "--executor", "ray", flag, value,
                 "--no-progress", "--checkpoint-dir", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {flag} {value} but the Ray cluster has") and len(err.splitlines()) == 1


def test_a_row_another_run_wrote_meanwhile_keeps_that_runs_files(cluster, tmp_path, monkeypatch):
    """test_grid_files.py's case on Ray: another run writes the job's row (and its files) while the
    task runs; the driver keeps that row and writes none of its own files over theirs."""
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, theirs = tmp_path / "r.csv", {}
    real = pipeline.executor_ray.run_jobs_on_ray

    def other_run_first(tasks, load, events, options):
        real_output = events.output

        def after_theirs(spec, data, output):  # the task is done, the driver has not written yet
            theirs.update(other_runs_files(spec, csv, tmp_path / "ck"))
            real_output(spec, data, output)
        events.output = after_theirs
        real(tasks, load, events, options)

    monkeypatch.setattr(pipeline.executor_ray, "run_jobs_on_ray", other_run_first)
    df = tiny_grid(root, csv, tmp_path, models=["cae"], executor="ray")
    assert not df.attrs["failures"] and read_results(csv)["finished_at"].tolist() == ["theirs"]
    assert len(theirs) == 3 and {path: path.read_bytes() for path in theirs} == theirs
