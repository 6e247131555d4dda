"""Where a grid writes (pipeline/grid.py's prepare, pipeline/job.py's write_output): the results
CSV and its side-file folder, the checkpoints and the image cache. Links and ``~`` lead where they
point; folders that cannot be made or written are refused before any training (exit 2, one
sentence), a read-only share with nothing to write is no reason to refuse; a full disk keeps the
row without the file; another run's row and files are kept as they are."""
from __future__ import annotations

import contextlib
import errno
import os

import pytest

import pipeline.checkpoints
import pipeline.executor_local
import pipeline.grid
import pipeline.runs
from helpers import (
    TINY,
    TRAIN,
    fake_row,
    grid_with_log,
    make_tiny_mvtec,
    one_error_line,
    other_runs_files,
    run_args,
    run_grid,
)
from models.errors import ConfigError
from pipeline import report, runs
from pipeline.__main__ import main
from pipeline.results import ResultsError, append_row, read_results

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


# ---------------------------------------------------------------- where the results and checkpoints go


def test_results_csv_that_is_a_symlink_is_written_where_it_points(root, tmp_path, capsys, monkeypatch):
    shared = tmp_path / "shared_drive"
    shared.mkdir()
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.csv"
    link.symlink_to("shared_drive/results.csv")  # relative, and the shared file does not exist yet

    assert main(run_args(root, link, tmp_path, models=("cae",))) == 0
    assert link.is_symlink() and os.readlink(link) == "shared_drive/results.csv"
    assert len(read_results(shared / "results.csv")) == 1
    assert (shared / ".results.csv.lock").exists() and not (tmp_path / ".link.csv.lock").exists()
    assert (shared / "results.runs").is_dir() and not (tmp_path / "link.runs").exists()

    # A second run through the link appends to the shared file (and still keeps the link).
    assert main(run_args(root, link, tmp_path, models=("cae", "vae"))) == 0
    assert link.is_symlink()
    assert sorted(read_results(shared / "results.csv")["model"]) == ["cae", "vae"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "link.csv", "shared_drive"]

    # Readers given the link find the side files beside the real file (training curves, scores).
    df = read_results(link)
    assert runs.runs_dir(link) == shared / "results.runs"
    assert sorted(runs.read_curves(df, link)["model"].unique()) == ["cae", "vae"]
    assert report.verdicts(df, link, n_boot=50)[1] == []  # no row lacks its per-image scores


def test_results_csv_under_home_tilde_goes_home(root, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    # The notebook's AD_RESULTS_CSV=~/results.csv: no shell expands the ~ there.
    run = run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                        results_csv="~/results.csv", checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    assert len(run) == 1 and len(read_results(home / "results.csv")) == 1
    assert (home / "results.runs").is_dir() and list(work.iterdir()) == []  # no folder named "~"
    assert len(read_results("~/results.csv")) == 1


def test_a_checkpoint_folder_under_home_tilde_goes_home(tmp_path, monkeypatch):
    """``--checkpoint-dir ~/ck`` from a notebook (no shell to expand ~): the checkpoint is written
    to and found in the home folder, not in a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    df, _ = grid_with_log(root, tmp_path / "r.csv", "~/ck")
    assert len(list((tmp_path / "home" / "ck").rglob("*.pt"))) == 1 and not (tmp_path / "~").exists()
    assert report.find_checkpoint(df.iloc[0], "~/ck") is not None


def test_cache_dir_that_is_a_link_to_a_folder_is_used(root, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "store", target_is_directory=True)
    assert main(run_args(root, tmp_path / "r.csv", tmp_path, "--cache-dir", str(tmp_path / "cache"),
                         models=("cae",))) == 0
    assert (tmp_path / "cache").is_symlink() and list((tmp_path / "store").glob("*.pt"))


# ---------------------------------------------------------------- folders checked before any training


def test_results_or_checkpoint_location_that_cannot_be_written(root, tmp_path, capsys, monkeypatch):
    """A results path under a file, a results path that is a folder, a checkpoint folder under
    a file, a figures folder under a file: exit 2, one sentence, before any training; an
    existing CSV is left untouched."""
    monkeypatch.setattr(pipeline.grid, "load_category",
                        lambda *a, **k: pytest.fail("trained despite an unwritable path"))
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file")
    folder = tmp_path / "a_folder.csv"
    folder.mkdir()
    csv = tmp_path / "r.csv"
    append_row(csv, fake_row())
    before = csv.read_bytes()
    cases = [
        (run_args(root, blocker / "r.csv", tmp_path), "cannot create the results folder"),
        (run_args(root, folder, tmp_path), "cannot be read"),
        (run_args(root, csv, tmp_path, "--checkpoint-dir", str(blocker / "ck")), "cannot create the checkpoint folder"),
        (["plots", "--results-csv", str(csv), "--out", str(blocker / "figs")], "cannot access"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert message in line and ("a_file" in line or "a_folder" in line), line
    assert csv.read_bytes() == before and blocker.read_text() == "I am a file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_results_file_and_folder(root, tmp_path, capsys):
    csv = tmp_path / "ro" / "r.csv"
    csv.parent.mkdir()
    append_row(csv, fake_row())
    before = csv.read_bytes()
    csv.chmod(0o444)
    assert main(run_args(root, csv, tmp_path)) == 2
    assert "read-only" in one_error_line(capsys.readouterr().err)
    csv.chmod(0o644)
    csv.parent.chmod(0o555)
    try:
        assert main(run_args(root, csv, tmp_path)) == 2
        assert "not writable" in one_error_line(capsys.readouterr().err)
    finally:
        csv.parent.chmod(0o755)
    assert csv.read_bytes() == before


def test_side_file_folder_taken_by_a_file_is_refused_before_training(root, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    (tmp_path / "r.runs").write_text("my notes")
    assert main(run_args(root, csv, tmp_path, models=("cae",))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "r.runs" in line and "side files" in line and "--results-csv" in line
    assert (tmp_path / "r.runs").read_text() == "my notes" and not csv.exists() and not (tmp_path / "ck").exists()
    with pytest.raises(ResultsError, match="side files"):  # the notebook's path: one sentence, not FileExistsError
        run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                      results_csv=csv, checkpoint_dir=tmp_path / "ck", log=lambda m: None)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_cache_dir_that_cannot_be_a_folder_exits_2_before_training(root, tmp_path, capsys, where):
    (tmp_path / "notes.txt").write_text("not a folder")
    cache = tmp_path / "notes.txt" if where == "a file" else tmp_path / "notes.txt" / "cache"
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--cache-dir", str(cache), models=("cae", "vae"))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(cache) in line and "--cache-dir" in line
    assert not csv.exists() and not list((tmp_path / "ck").rglob("*.pt"))  # nothing trained
    with pytest.raises(ConfigError, match="cache folder"):  # the same from Python
        run_grid(root, ["widget"], ["cae"], image_size=32, train=TRAIN, model_overrides=TINY,
                      results_csv=csv, checkpoint_dir=tmp_path / "ck", cache_dir=cache, log=lambda m: None)


def read_only(monkeypatch, *folders) -> None:
    """Make ``folders`` (and what is under them) read-only as a read-only share is: ``os.access``
    says so, for root too (which ignores permission bits, not a read-only mount)."""
    real = os.access
    folders = [os.path.abspath(f) for f in folders]

    def access(path, mode, *a, **k):
        path = os.path.abspath(path)
        if mode & os.W_OK and any(path == f or path.startswith(f + os.sep) for f in folders):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_side_file_folder_is_refused_before_training(root, tmp_path, capsys, monkeypatch):
    """<csv>.runs/ read-only (its data manifest already there): exit 2 naming it, before training."""
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    before = csv.read_bytes()
    read_only(monkeypatch, tmp_path / "r.runs")
    monkeypatch.setattr(pipeline.grid, "load_category",
                        lambda *a, **k: pytest.fail("trained before finding r.runs read-only"))
    assert main(run_args(root, csv, tmp_path, "--models", "vae")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "side-file folder" in line and "r.runs" in line and "not writable" in line and "--results-csv" in line
    assert csv.read_bytes() == before


def test_a_finished_grid_on_a_read_only_share_reports_its_rows(root, tmp_path, capsys, monkeypatch):
    """Every job done and nothing to write: a read-only results folder is no reason to refuse."""
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    capsys.readouterr()
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    read_only(monkeypatch, tmp_path)
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    out, err = capsys.readouterr()
    assert "1 already in" in out and "error" not in err
    assert any(line.split()[:2] == ["widget", "cae"] for line in out.splitlines())  # the table's row
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == files


# ---------------------------------------------------------------- writing a job's files


def fill_the_disk(monkeypatch, module, suffix: str) -> None:
    """Every file ending in ``suffix`` that ``module`` writes fails midway as on a full disk."""
    real = module.atomic_write

    @contextlib.contextmanager
    def full(path, *a, **k):
        with real(path, *a, **k) as f:
            if str(path).endswith(suffix):
                f.write(b"half a file")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield f

    monkeypatch.setattr(module, "atomic_write", full)


@pytest.mark.parametrize("which", ["checkpoint", "scores"])
def test_a_full_disk_while_writing_a_jobs_files_names_the_path_and_keeps_the_row(root, tmp_path, capsys,
                                                                                 monkeypatch, which):
    """ENOSPC while writing a job's checkpoint or per-image scores: the row is kept (its numbers
    are right), the file is named with what to do, no half file and no stale older file is left
    at its path (here: scores of a row replaced by --force), exit 1. The grid goes on."""
    csv = tmp_path / "r.csv"
    extra = ()
    if which == "scores":  # an earlier row's scores, which the forced row replaces
        assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
        extra = ("--force",)
    capsys.readouterr()
    module, suffix = (pipeline.checkpoints, ".pt") if which == "checkpoint" else (pipeline.runs, ".scores.npz")
    fill_the_disk(monkeypatch, module, suffix)
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "vae", *extra)) == 1
    out, err = capsys.readouterr()
    table = read_results(csv)
    assert sorted(table["model"]) == ["cae", "vae"] and "Traceback" not in out + err
    left_out = [p for p in tmp_path.rglob(f"*{suffix}")]
    assert left_out == [] and not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    lines = [line for line in out.splitlines() if "No space left on device" in line]
    assert len(lines) == 2 and all(suffix in line and "free disk space" in line for line in lines), out
    assert "2 row(s) were kept without a file" in err


def test_a_row_another_run_wrote_meanwhile_keeps_that_runs_checkpoint_and_side_files(root, tmp_path, capsys,
                                                                                     monkeypatch):
    """Two runs of one job at once: the other writes its row while this one computes; this run
    keeps their row and writes none of its own files over theirs (test_executor_ray.py: the same on Ray)."""
    csv, theirs = tmp_path / "r.csv", {}
    real = pipeline.executor_local.compute_job

    def other_run_finishes_first(spec, data, **kw):
        result = real(spec, data, **kw)
        theirs.update(other_runs_files(spec, csv, tmp_path / "ck"))
        return result

    monkeypatch.setattr(pipeline.executor_local, "compute_job", other_run_finishes_first)
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    assert "another run wrote this row meanwhile; kept theirs" in capsys.readouterr().out
    assert read_results(csv)["finished_at"].tolist() == ["theirs"]
    assert len(theirs) == 3 and {path: path.read_bytes() for path in theirs} == theirs
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
