"""The command line: a real `run` process killed mid-grid resumes; errors are one sentence."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import models
import pipeline.__main__
import pipeline.evaluate
import pipeline.grid
import pipeline.job
import pipeline.plots
import pipeline.results
from helpers import SLOW_EPOCHS_CLI, make_tiny_mvtec
from pipeline.__main__ import main

REPO = Path(__file__).resolve().parents[1]
TINY_SET = ["--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16",
            "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16"]


def run_args(root, csv, tmp, *extra):
    return ["run", "--data-root", str(root), "--categories", "widget", "--image-size", "32", "--epochs", "1",
            "--batch-size", "4", "--results-csv", str(csv), "--checkpoint-dir", str(tmp / "ck"), "--no-progress",
            "--num-threads", "1", *TINY_SET, *extra]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_mvtec(tmp_path_factory.mktemp("cli_data"), categories=("widget",))


def cli(args, *, epoch_sleep: float = 0, **kw):
    """A real `python -m pipeline ARGS` process; with ``epoch_sleep`` each training epoch sleeps that long."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    cmd = ([sys.executable, "-c", SLOW_EPOCHS_CLI, str(epoch_sleep)] if epoch_sleep
           else [sys.executable, "-m", "pipeline"])
    return subprocess.Popen([*cmd, *args], cwd=kw.pop("cwd", REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_during_second_job_keeps_first_row_and_resumes(root, tmp_path):
    csv = tmp_path / "results.csv"
    args = run_args(root, csv, tmp_path, "--models", "cae", "vae")
    # Each training epoch sleeps 3 s, so job 2 is certainly still training when we kill it
    # right after it announces itself.
    proc = cli(args, epoch_sleep=3)
    try:
        for line in proc.stdout:
            if line.startswith("[2/2] vae on widget"):
                break
        else:
            pytest.fail(f"job 2 never started: {proc.stderr.read()}")
        assert len(pd.read_csv(csv)) == 1  # the first row is written the moment job 1 ends
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    first = csv.read_bytes()
    table = pipeline.results.read_results(csv)
    assert list(table["model"]) == ["cae"] and table["image_auroc"].between(0, 1).all()

    resumed = cli(args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "2 job(s): 1 already in" in out and "[1/1] vae on widget" in out
    table = pipeline.results.read_results(csv)
    assert list(table["model"]) == ["cae", "vae"]
    assert csv.read_bytes().startswith(first)  # the first row is kept byte for byte
    assert "image_auroc" in out  # the results table is printed


def test_corrupt_csv_exits_2_with_one_sentence_and_is_left_as_it_was(root, tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_bytes(b"\x00\xffnot,a\ncsv")
    proc = cli(run_args(root, csv, tmp_path, "--models", "cae"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.startswith("error: results file") and "results.csv" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and csv.read_bytes() == b"\x00\xffnot,a\ncsv"


@pytest.mark.parametrize("extra, message", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--epochs", "0"], "epochs must be"),
    (["--batch-size", "-1"], "batch_size must be"),
    (["--categories", "nope"], "unknown category 'nope'"),
    (["--set", "cae.nope=1"], "cae has no setting 'nope'"),
    (["--set", "oops"], "--set expects MODEL.KEY=VALUE"),
])
def test_bad_arguments_exit_2_with_one_sentence(root, tmp_path, capsys, extra, message):
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_unavailable_device_exits_2_before_any_data_is_read(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data read for an unusable device"))
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, "--models", "cae", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training: device 'cuda' was requested but no CUDA GPU is available")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.csv").exists()


def test_missing_data_root_exits_2(tmp_path, capsys):
    assert main(["run", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_failed_job_exits_1_and_ctrl_c_exits_130_keeping_rows(root, tmp_path, capsys, monkeypatch):
    csv = tmp_path / "r.csv"

    def nan_loss(self, x):
        return {"loss": (self.reconstruct(x) * float("nan")).mean()}

    monkeypatch.setattr(models.MODELS["vae"], "loss", nan_loss)
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "vae")) == 1
    err = capsys.readouterr().err
    assert "1 job(s) failed" in err and "vae on widget" in err and "epoch 1" in err
    assert list(pipeline.results.read_results(csv)["model"]) == ["cae"]

    monkeypatch.undo()
    real = pipeline.grid.compute_job
    calls = []

    def interrupted_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline.grid, "compute_job", interrupted_second)
    csv.unlink()
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "vae")) == 130
    assert "interrupted; finished rows are kept" in capsys.readouterr().err
    assert list(pipeline.results.read_results(csv)["model"]) == ["cae"]


def test_default_root_falls_back_to_the_demo_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    real = pipeline.__main__.make_synthetic_dataset
    monkeypatch.setattr(pipeline.__main__, "make_synthetic_dataset", lambda out, seed=0: real(
        out, seed, image_size=32, n_train=6, n_test_good=2, n_per_defect=1, categories=["weave"]))
    args = run_args("x", tmp_path / "r.csv", tmp_path, "--models", "cae")
    args = args[:1] + args[3:]  # no --data-root
    args[args.index("widget")] = "weave"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "No dataset at ./mvtec_anomaly_detection" in out and "data/demo" in out
    assert (tmp_path / "data" / "demo" / "weave").is_dir()
    assert pipeline.results.read_results(tmp_path / "r.csv")["dataset"].tolist() == ["demo"]


def test_help_and_plots(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0 and "--results-csv" in capsys.readouterr().out
    seen = {}
    monkeypatch.setattr(pipeline.plots, "make_all_figures",
                        lambda df, out, curves=None: seen.update(df=df, out=out) or [out / "x.png"])
    csv = tmp_path / "r.csv"
    pd.DataFrame({**{c: ["x"] for c in pipeline.results.KEY_COLUMNS}, "seed": [0]}).to_csv(csv, index=False)
    assert main(["plots", "--results-csv", str(csv), "--out", str(tmp_path / "figs")]) == 0
    assert len(seen["df"]) == 1 and seen["out"] == tmp_path / "figs"
    assert main(["plots", "--results-csv", str(tmp_path / "none.csv")]) == 2
