"""The command line (pipeline/__main__.py): what is refused before any work (exit 2 and one
sentence on stderr), its options, exit 1 for failed jobs, Ctrl-C / SIGTERM / SIGHUP ending a run
with its finished rows kept, real processes killed, run side by side or stopped by a full disk,
and the plots command. In-process (``main([...])``) where possible; a real process (slow) where
the case needs one."""
from __future__ import annotations

import os
import signal
import textwrap

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

import models
import pipeline.executor_local
import pipeline.grid
import pipeline.plots
import pipeline.results
from helpers import (
    TINY_CAE_SET,
    cae_run_args,
    fake_row,
    one_error_line,
    refused,
    run_args,
    spawn_pipeline,
    wait_for_line,
)
from pipeline.__main__ import main
from pipeline.results import append_row, read_results

# ---------------------------------------------------------------- refused before any work: exit 2, one sentence


def test_missing_data_root_exits_2(tmp_path, capsys):
    assert main(["run", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_empty_root_or_a_category_given_as_root_exit_2(root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--data-root", str(tmp_path / "empty"), "--results-csv", str(tmp_path / "r.csv")]) == 2
    assert "no category folders" in one_error_line(capsys.readouterr().err)
    assert main(["run", "--data-root", str(root / "widget"), "--results-csv", str(tmp_path / "r.csv")]) == 2
    assert f"pass its parent folder {root}" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r.csv").exists()


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


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "36", "--models", "vit_vae"], "not a multiple of patch_size 8"),
    (["--image-size", "34", "--models", "cae"], "not a multiple of 4"),
    (["--image-size", "0"], "image_size must be at least 16"),
    (["--epochs", "-3"], "epochs must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--models", "cae", "--set", "cae.image_size=64"], "cae.image_size cannot be overridden"),
    (["--models", "cae", "--set", "cae.latent_dim=1.5"], "latent_dim must be a whole number"),
    (["--models", "cae", "--set", "cae.widths=abc"], "widths must be a list of whole numbers"),
])
def test_bad_parameters_exit_2_before_any_work(root, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data read for a bad parameter"))
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, *extra)) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("seeds", [
    ["--seed", str(2**64)],  # was a raw "ValueError: Overflow when unpacking long long" per job
    ["--seed", str(2**63)],  # was silently seed 0's results under another config_hash
    ["--seeds", "0", str(2**32)],  # 2**32 = 0 for torch
    ["--seed", "-1"],
])
def test_a_seed_outside_0_to_2_32_exits_2_with_one_sentence(root, tmp_path, capsys, no_data, seeds):
    assert main(cae_run_args(root, tmp_path, *seeds)) == 2
    err = refused(capsys, tmp_path)
    assert "training: seed must be a whole number from 0 to 4294967295" in err and seeds[-1] in err


@pytest.mark.parametrize("setting, message", [
    ("vae.latnt=3", "vae has no setting 'latnt'"),
    ("vae.latent_dim=1.5", "vae: latent_dim must be a whole number"),
    ("vit_vae.patch_size=5", "vit_vae: image_size 32 is not a multiple of patch_size 5"),
])
def test_set_of_a_model_that_is_not_run_is_checked(root, tmp_path, capsys, no_data, setting, message):
    assert main(cae_run_args(root, tmp_path, "--models", "cae", "--set", setting)) == 2
    assert message in refused(capsys, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_unavailable_device_exits_2_before_any_data_is_read(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data read for an unusable device"))
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, "--models", "cae", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training: device 'cuda' was requested but no CUDA GPU is available")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.csv").exists()


@pytest.mark.skipif(bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_unavailable_mps_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    assert main(cae_run_args(root, tmp_path, "--device", "mps")) == 2
    assert "device 'mps' was requested but MPS is not available" in refused(capsys, tmp_path)


@pytest.mark.slow  # a real `python -m pipeline` process
def test_corrupt_csv_exits_2_with_one_sentence_and_is_left_as_it_was(root, tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_bytes(b"\x00\xffnot,a\ncsv")
    proc = spawn_pipeline(run_args(root, csv, tmp_path, "--models", "cae"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.startswith("error: results file") and "results.csv" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and csv.read_bytes() == b"\x00\xffnot,a\ncsv"


# ---------------------------------------------------------------- options


def test_repeated_list_options_accumulate(root, tmp_path):
    args = cae_run_args(root, tmp_path, *TINY_CAE_SET, "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16")
    args += ["--models", "vae", "--seeds", "0", "--seeds", "1", "--categories", "widget", "--categories", "widget"]
    assert main(args) == 0  # "--models cae" (in run_args) and "--models vae": both run, as they read
    rows = pd.read_csv(tmp_path / "r.csv")
    assert sorted(zip(rows["model"], rows["seed"])) == [("cae", 0), ("cae", 1), ("vae", 0), ("vae", 1)]


def test_image_size_16_with_batch_size_1_trains_cae_and_vae(root, tmp_path):
    # 16 px: the CAE's and VAE's 4 encoder stages end in a 1x1 map, where a batch of one image
    # gave BatchNorm a single value per channel ("Expected more than 1 value per channel").
    assert main(cae_run_args(root, tmp_path, "--models", "cae", "vae", "--image-size", "16", "--batch-size", "1")) == 0
    rows = pd.read_csv(tmp_path / "r.csv")
    assert sorted(rows["model"]) == ["cae", "vae"] and rows["image_auroc"].notna().all()


# ---------------------------------------------------------------- failed jobs, interrupts and signals


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
    real = pipeline.executor_local.compute_job
    calls = []

    def interrupted_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline.executor_local, "compute_job", interrupted_second)
    csv.unlink()
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "vae")) == 130
    assert "interrupted; finished rows are kept" in capsys.readouterr().err
    assert list(pipeline.results.read_results(csv)["model"]) == ["cae"]


def test_sighup_ends_a_run_like_ctrl_c_and_the_handlers_are_put_back(root, tmp_path, capsys, monkeypatch):
    """SIGHUP (the terminal closed) during a job: exit 129 with one line, no row; afterwards the
    process's own handlers are back (main() may run inside a notebook or a test)."""
    csv = tmp_path / "r.csv"

    def hang_up(*a, **k):
        os.kill(os.getpid(), signal.SIGHUP)
        pytest.fail("SIGHUP did not stop the job")

    monkeypatch.setattr(pipeline.executor_local, "compute_job", hang_up)
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: None)  # if main() ignored it: not pytest's end
    try:
        before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
        assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 128 + signal.SIGHUP
        assert "stopped by SIGHUP; finished rows are kept in" in capsys.readouterr().err and not csv.exists()
        assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.slow  # a real `python -m pipeline` process
@pytest.mark.parametrize("sig, status, said", [
    (signal.SIGINT, 130, "interrupted; finished rows are kept in"),  # Ctrl-C
    (signal.SIGTERM, 143, "stopped by SIGTERM; finished rows are kept in"),  # a scheduler's stop, `kill`
], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_a_real_run_ends_it_with_one_line_and_keeps_finished_rows(root, tmp_path, sig, status, said):
    """A real SIGINT or SIGTERM while a job trains: its exit status with one line, the CSV's
    earlier rows byte-identical."""
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())  # a row finished by an earlier run
    before = csv.read_bytes()
    proc = spawn_pipeline(run_args(root, csv, tmp_path, "--models", "cae"), epoch_sleep=2)
    try:
        wait_for_line(proc, "[1/1] cae on widget", "the job never started")
        proc.send_signal(sig)  # while the job trains (it sleeps 2 s after its epoch)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert said in err and "Traceback" not in err
    assert csv.read_bytes() == before and not list(tmp_path.glob(".r.csv.*.tmp"))


@pytest.mark.slow  # a real `python -m pipeline` process
def test_sigkill_during_second_job_keeps_first_row_and_resumes(root, tmp_path):
    csv = tmp_path / "results.csv"
    args = run_args(root, csv, tmp_path, "--models", "cae", "vae")
    # Each training epoch sleeps 3 s, so job 2 is certainly still training when we kill it
    # right after it announces itself.
    proc = spawn_pipeline(args, epoch_sleep=3)
    try:
        wait_for_line(proc, "[2/2] vae on widget", "job 2 never started")
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

    resumed = spawn_pipeline(args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "2 job(s): 1 already in" in out and "[1/1] vae on widget" in out
    table = pipeline.results.read_results(csv)
    assert list(table["model"]) == ["cae", "vae"]
    assert csv.read_bytes().startswith(first)  # the first row is kept byte for byte
    assert "image_auroc" in out  # the results table is printed


@pytest.mark.slow  # a real `python -m pipeline` process
def test_two_run_processes_on_one_csv_lose_and_duplicate_nothing(root, tmp_path):
    """Two real `run` processes, the same two jobs in opposite orders, one CSV: both exit 0,
    the CSV holds each job once (the later writer keeps the row already there)."""
    csv = tmp_path / "r.csv"
    # Started together, each decides both jobs are to do; whichever finishes a job second
    # finds its row written and keeps it (or, if the other was quicker, skips it at the start).
    procs = [spawn_pipeline(run_args(root, csv, tmp_path, "--models", *order))
             for order in (("cae", "vae"), ("vae", "cae"))]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            p.kill()
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    table = read_results(csv)
    assert sorted(table["model"]) == ["cae", "vae"] and table["config_hash"].is_unique
    assert not list(tmp_path.glob(".r.csv.*.tmp"))


FSIZE_HARNESS = textwrap.dedent("""
    import resource, signal, sys
    import pipeline.executor_local, pipeline.grid
    import pipeline.results
    from models import build_model
    from pipeline.__main__ import main
    from models.errors import UserError
    from pipeline.checkpoints import save_checkpoint
    from pipeline.job import JobOutput

    def fake_job(spec, data=None, **kw):  # a finished job whose row is larger than the limit allows
        row = {**dict(zip(pipeline.results.KEY_COLUMNS, spec.key())), "image_auroc": 0.5, "train_seconds": 1.0,
               "config_json": "x" * 5000}
        return JobOutput(row=row, checkpoint=None, evaluation=None, history=None)

    pipeline.executor_local.compute_job = fake_job
    pipeline.grid.write_output = lambda *a, **k: []  # no side files: the CSV write is what fails
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint(sys.argv[2], build_model("cae", image_size=32, widths=(8, 16), latent_dim=16), name="cae")
    except UserError as e:
        print("CHECKPOINT:", e)
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow  # a real `python -m pipeline` process
def test_a_write_that_fails_midway_keeps_the_old_csv(root, tmp_path):
    """A real write failure that root cannot bypass: a file-size limit (as a full disk) makes
    the checkpoint and the CSV writes fail; each is one sentence, the old CSV stays byte-identical,
    no temp file is left, exit 2."""
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())
    before = csv.read_bytes()
    ck = tmp_path / "ck" / "x.pt"
    proc = spawn_pipeline([str(len(before) + 2000), str(ck), *run_args(root, csv, tmp_path, "--models", "cae")],
                          code=FSIZE_HARNESS)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "CHECKPOINT: cannot write the checkpoint" in out and "--checkpoint-dir" in out
    line = one_error_line(err)
    assert "cannot write results to" in line and "File too large" in line and "left as it was" in line
    assert csv.read_bytes() == before and not ck.exists()
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- plots


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


def test_figures_say_which_config_is_drawn_and_how_many_rows_were_left_out(root, tmp_path, monkeypatch):
    assert main(cae_run_args(root, tmp_path, *TINY_CAE_SET)) == 0
    assert main(cae_run_args(root, tmp_path, *TINY_CAE_SET, "--epochs", "2", "--min-steps", "0")) == 0
    rows = pd.read_csv(tmp_path / "r.csv")
    assert len(rows) == 2
    latest = rows.sort_values("finished_at")["config_hash"].iloc[-1]
    figures, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or savefig(fig, *a, **k))
    assert main(["plots", "--results-csv", str(tmp_path / "r.csv"), "--out", str(tmp_path / "figs")]) == 0
    comparison = figures[:4]  # the four comparison figures (FIGURE_NAMES); then the training curves
    assert len(comparison) == 4
    for fig in comparison:
        (note,) = [t.get_text() for t in fig.findobj(Text) if t.get_gid() == "left-out-note"]
        assert "1 row of older configs left out" in note
        assert "epochs 1 -> 2" in note and f"config_hash {latest}" in note
