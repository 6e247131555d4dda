"""The grid (pipeline/grid.py): the rows it writes, what a rerun trains (nothing, a changed
category, an evaluation-only change from the checkpoints, everything with --force), the names and
settings it refuses before any training, and failing jobs that leave the rest of the grid going.
Where it writes (folders, links, a full disk): test_grid_files.py; why it says jobs run again:
test_reruns.py."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import models
import pipeline.executor_local
import pipeline.job
from helpers import TINY, TRAIN, grid_with_log, make_tiny_mvtec, one_error_line, run_args, run_grid, tiny_grid
from models import mvtec
from models.errors import UserError
from models.scoring import ScoreConfig
from pipeline import report, runs
from pipeline.__main__ import main
from pipeline.checkpoints import load_checkpoint
from pipeline.evaluate import EvalConfig
from pipeline.results import COLUMNS, append_row, read_results
from pipeline.train import TrainConfig

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


# ---------------------------------------------------------------- the rows of a grid, and what a rerun trains


def test_grid_writes_four_complete_rows(grid_of_four):
    root, csv, df, tmp = grid_of_four
    assert df.attrs["ran"] == 4 and not df.attrs["failures"]
    table = read_results(csv)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert sorted(table["model"]) == sorted(TINY) and len(table) == 4
    for m in ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall", "f1_max"):
        assert table[m].between(0, 1).all(), (m, table[m].tolist())
    assert (table["dataset"] == models.mvtec.dataset_name(root)).all()
    assert (table["category_type"] == "custom").all()
    assert table["config_hash"].nunique() == 4 and (table["epochs"] == 1).all()
    assert (table["threshold_rule"] == EvalConfig().threshold_rule).all()
    assert (table["score"] == ScoreConfig().name).all() and (table["eval_size"] == "256").all()
    assert table["data_fingerprint"].nunique() == 1 and table["train_hash"].nunique() == 4
    assert (table[["train_seconds", "infer_ms_per_image", "params", "peak_memory_mb"]] > 0).all().all()
    # each job saved a checkpoint (named by what changes the weights) that loads back as its model and config
    for _, row in table.iterrows():
        path = tmp / "ck" / row["dataset"] / "widget" / f"{row['model']}-{row['train_hash']}.pt"
        m = load_checkpoint(path, model=row["model"],
                            config=models.model_config(row["model"], 32, **TINY[row["model"]]))
        assert m.checkpoint["row"]["config_hash"] == row["config_hash"]


def test_rerun_trains_nothing_and_leaves_csv_byte_identical(grid_of_four, monkeypatch):
    root, csv, _, tmp = grid_of_four
    before, mtime = csv.read_bytes(), csv.stat().st_mtime_ns
    monkeypatch.setattr(pipeline.executor_local, "compute_job", lambda *a, **k: pytest.fail("cached job retrained"))
    df = tiny_grid(root, csv, tmp)
    assert df.attrs["ran"] == 0 and df.attrs["skipped"] == 4 and len(df) == 4
    assert csv.read_bytes() == before and csv.stat().st_mtime_ns == mtime


def test_force_and_deleting_the_csv_retrain(grid_of_four, tmp_path):
    root, csv, _, tmp = grid_of_four
    mine = tmp_path / "r.csv"
    shutil.copy(csv, mine)
    old = read_results(mine).set_index("model")
    df = tiny_grid(root, mine, tmp_path, models=["cae"], force=True)
    assert df.attrs["ran"] == 1
    new = read_results(mine).set_index("model")
    assert len(new) == 4  # replaced, not duplicated
    assert new.loc["cae", "config_hash"] == old.loc["cae", "config_hash"]
    assert new.loc["vae", "finished_at"] == old.loc["vae", "finished_at"]  # others untouched
    mine.unlink()
    df = tiny_grid(root, mine, tmp_path, models=["cae"])
    assert df.attrs["ran"] == 1 and len(read_results(mine)) == 1
    # same seed, same machine: the retrained row has the same metrics
    assert new.loc["cae", "image_auroc"] == pytest.approx(read_results(mine).iloc[0]["image_auroc"])


def test_same_named_roots_with_different_images_never_share_rows(tmp_path, trainings):
    a = make_tiny_mvtec(tmp_path / "projA" / "data", categories=("widget",), seed=0)
    b = make_tiny_mvtec(tmp_path / "projB" / "data", categories=("widget",), seed=1)
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid_with_log(a, csv, ckpt)
    df_b, log = grid_with_log(b, csv, ckpt)
    assert "1 to train" in log and len(trainings) == 2  # projA's row was not reused for projB
    table = read_results(csv)
    assert len(table) == 2 and table["dataset"].nunique() == 1 and table["data_fingerprint"].nunique() == 2
    assert len(list(ckpt.rglob("*.pt"))) == 2  # two checkpoints, never one overwritten by the other
    # a copy of projA's folder (other mtimes, other place) is the same data: its row is reused
    copy = tmp_path / "copy" / "data"
    shutil.copytree(a, copy)
    _, log = grid_with_log(copy, csv, ckpt)
    assert "1 already in" in log and len(trainings) == 2


def test_rows_of_an_older_version_are_rows_whose_key_does_not_match_kept_and_rerun(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget", "fabric"))
    csv = tmp_path / "r.csv"
    for category in ("widget", "fabric"):  # what version 1 wrote: no fingerprint, no train_hash, scoring in the model
        append_row(csv, {"dataset": "data", "category": category, "category_type": "custom", "model": "cae",
                         "image_auroc": 0.5, "seed": 0, "config_hash": f"old{category}",
                         "config_json": json.dumps({"hash_version": 1, "model": "cae"})})
    df, log = grid_with_log(root, csv, tmp_path / "ck", categories=None)
    assert "2 to train" in log and "row(s) of these jobs" not in log  # no message of its own
    assert len(trainings) == 2 and len(read_results(csv)) == 4  # old rows kept, new keys added


def test_seeds_give_a_row_each_side_files_curves_and_verdicts(tmp_path):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv = tmp_path / "r.csv"
    df, log = grid_with_log(root, csv, tmp_path / "ck", models=["cae", "vae_grf"], seeds=[0, 1])
    assert sorted(zip(df["model"], df["seed"])) == [("cae", 0), ("cae", 1), ("vae_grf", 0), ("vae_grf", 1)]
    assert "(seed 1)" in log
    per_image, missing = runs.read_score_sets(df, csv)
    assert not missing and len(per_image) == 4
    run = per_image[("cae", "widget", 0)]
    row = df[(df["model"] == "cae") & (df["seed"] == 0)].iloc[0]
    assert run.image_auroc() == pytest.approx(row["image_auroc"])  # the side file holds what the row measured
    assert run.pixel_auroc() == pytest.approx(row["pixel_auroc"], abs=2e-3)
    curves = runs.read_curves(df, csv)
    assert len(curves) == 4 and set(curves["epoch"]) == {1} and {"recon", "kl"} <= set(curves.columns)
    text = report.summary(df)
    assert "Differences between models" in text and "2 seeds" in text
    table = report.metric_tables(df)
    assert "±" in str(table.iloc[0, 0])
    floor = float(table[report.F1_FLOOR_COLUMN].iloc[0])
    assert floor == pytest.approx(df["f1_floor"].iloc[0], abs=5e-4)
    assert floor == pytest.approx(0.8, abs=5e-4)  # p = 4 / 6 defective: 2p / (1 + p)
    # The plots command draws the training curves from the side files next to the CSV.
    assert main(["plots", "--results-csv", str(csv), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "training_curves.png").stat().st_size > 10_000
    # Side files deleted by hand: the rows still count as done, the bootstrap leaves them out and names them.
    for path in runs.runs_dir(csv).rglob("cae-*.scores.npz"):
        path.unlink()
    text = report.summary(df)
    assert "Left out (no per-image scores): cae on widget (seed 0), cae on widget (seed 1)" in text


# ---------------------------------------------------------------- re-evaluation from checkpoints


@pytest.mark.slow  # about 9 s: three evaluation settings, then three grids that train
def test_an_evaluation_only_change_trains_nothing(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    first, _ = grid_with_log(root, csv, ckpt, models=["cae", "vae_grf"])
    assert len(trainings) == 2
    for ev in (EvalConfig(score=ScoreConfig.parse("ssim/2/max")), EvalConfig(eval_size=64),
               EvalConfig(eval_size="original", threshold_rule="val_p99")):
        df, log = grid_with_log(root, csv, ckpt, models=["cae", "vae_grf"], eval_config=ev)
        assert len(trainings) == 2, ev  # no training at all
        assert "0 to train, 2 to evaluate from their checkpoints" in log and "evaluating from checkpoint" in log
        assert df.attrs["evaluated"] == 2 and df.attrs["trained"] == 0
        assert set(df["train_hash"]) == set(first["train_hash"]) and not set(df["config_hash"]) & set(
            first["config_hash"])
        assert (df["score"] == ev.score.name).all() and (df["eval_size"] == str(ev.eval_size)).all()
        assert (df["train_seconds"].to_numpy() == first["train_seconds"].to_numpy()).all()  # the training it came from
    # The user's rule: without the CSV (or with --force) every job trains, checkpoints or not.
    grid_with_log(root, tmp_path / "new.csv", ckpt, models=["cae", "vae_grf"])
    assert len(trainings) == 4
    grid_with_log(root, csv, ckpt, models=["cae"], force=True)
    assert len(trainings) == 5


def test_a_damaged_checkpoint_is_retrained_not_a_failure(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid_with_log(root, csv, ckpt)
    (path,) = ckpt.rglob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    df, log = grid_with_log(root, csv, ckpt, eval_config=EvalConfig(eval_size=64))
    assert "cannot use its checkpoint" in log and "training instead" in log
    assert len(trainings) == 2 and not df.attrs["failures"]


def test_a_re_evaluated_row_is_logged_as_re_evaluated_not_trained(root, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    assert main(run_args(root, csv, tmp_path, "--models", "cae")) == 0
    capsys.readouterr()
    assert main(run_args(root, csv, tmp_path, "--models", "cae", "--threshold-rule", "val_max")) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if "image AUROC" in line][0]
    assert "re-evaluated from checkpoint in" in line and "trained in" not in line


# ---------------------------------------------------------------- names and settings refused before any training


def test_bad_parameters_fail_before_any_training(grid_of_four, tmp_path):
    root = grid_of_four[0]
    with pytest.raises(UserError, match="epochs"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, train=TrainConfig(epochs=0))
    with pytest.raises(UserError, match="unknown model"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, models=["nope"])
    with pytest.raises(UserError, match="unknown category"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, categories=["nope"])
    with pytest.raises(UserError, match="multiple|stride|patch|divisible"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, image_size=36)
    with pytest.raises(UserError, match="threshold rule"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(threshold_rule="test_max"))
    with pytest.raises(UserError, match="evaluation size"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(eval_size=8))
    with pytest.raises(UserError, match="score_map"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(score=ScoreConfig(score_map="l1")))
    with pytest.raises(UserError, match="evaluation setting"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, model_overrides={"cae": {"score_reduce": "max"}})
    with pytest.raises(UserError, match="seed"):
        tiny_grid(root, tmp_path / "r.csv", tmp_path, seeds=[0, -1])
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("where", ["category", "data root"])
def test_a_folder_name_that_is_not_utf8_is_refused_before_training(tmp_path, capsys, where):
    latin1 = os.fsdecode(b"caf\xe9")  # as a zip made on Windows unpacks: a surrogate escape in Python
    if where == "category":
        data = make_tiny_mvtec(tmp_path / "data", categories=("widget", latin1), n_train=4, n_test_good=1,
                               n_per_defect=1)
        cats = ("widget", latin1)
    else:
        data = make_tiny_mvtec(tmp_path / latin1, categories=("widget",), n_train=4, n_test_good=1, n_per_defect=1)
        cats = ("widget",)
    csv = tmp_path / "r.csv"
    assert main(run_args(data, csv, tmp_path, categories=cats, models=("cae",))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "caf\\xe9" in line and "UTF-8" in line and "rename" in line, line
    assert not csv.exists() and not list(tmp_path.rglob("*.pt"))  # nothing trained


# ---------------------------------------------------------------- failing jobs: the grid goes on


def test_failing_job_is_reported_and_the_grid_goes_on(grid_of_four, tmp_path, monkeypatch):
    root, _, _, _ = grid_of_four

    def nan_loss(self, x):
        return {"loss": (self.reconstruct(x) * float("nan")).mean()}

    monkeypatch.setattr(models.MODELS["vae"], "loss", nan_loss)
    logs = []
    df = tiny_grid(root, tmp_path / "r.csv", tmp_path, models=["vae", "cae"], log=logs.append)
    (failure,) = df.attrs["failures"]
    assert failure["model"] == "vae" and "epoch 1" in failure["error"] and "widget" in failure["error"]
    assert list(df["model"]) == ["cae"]
    assert any("vae on widget: FAILED" in line for line in logs)


def test_training_that_diverges_in_its_last_step_fails_that_job_only(root, tmp_path, monkeypatch):
    """The loss stays finite but the last optimiser step makes the weights NaN (NaN gradient):
    the job fails with a TrainingError sentence, the next model still runs and is written."""
    real = models.MODELS["cae"].loss
    steps = {"n": 0}

    def loss_with_nan_gradient_at_step_2(self, x):
        out = real(self, x)
        if self.training and x.device.type != "meta":  # not the memory estimate's pass (pipeline/memory.py)
            steps["n"] += 1
            if steps["n"] == 2:  # 7 train images, batch 4 -> 2 steps: the last one
                p = next(self.parameters())
                out["loss"] = out["loss"] + torch.sqrt(p.sum() * 0.0)  # value 0, gradient NaN
        return out

    monkeypatch.setattr(models.MODELS["cae"], "loss", loss_with_nan_gradient_at_step_2)
    logs = []
    df = run_grid(root, ["widget"], ["cae", "vae"], image_size=32, train=TRAIN, model_overrides=TINY,
                             results_csv=tmp_path / "r.csv", checkpoint_dir=tmp_path / "ck", log=logs.append)
    (failure,) = df.attrs["failures"]
    assert failure["model"] == "cae" and "traceback" not in failure  # a TrainingError, not a crash
    assert "NaN or infinite anomaly maps" in failure["error"] and "'widget'" in failure["error"]
    assert list(df["model"]) == ["vae"] and list(read_results(tmp_path / "r.csv")["model"]) == ["vae"]


def test_messy_grid_bad_categories_fail_alone_and_the_rest_finish(tmp_path, capsys):
    """One grid over four categories: a non-ASCII name with spaces (works), no defective test
    images (works: image AUROC NaN + warning), no train images and a zero-byte PNG (each fails
    in one sentence naming the file); exit 1, the good rows written; a batch larger than the
    train split is clamped."""
    good = "wïdget 1"
    make_tiny_mvtec(tmp_path / "data", categories=(good, "no_train", "broken"), gray_categories=())
    make_tiny_mvtec(tmp_path / "data", categories=("no_defects",), defects=(), n_test_good=3)
    root = tmp_path / "data"
    for f in (root / "no_train" / "train" / "good").iterdir():
        f.unlink()
    zero = root / "broken" / "test" / "hole" / "000.png"
    zero.write_bytes(b"")
    # a defective image (and its mask) whose names hold spaces and non-ASCII characters
    d = root / good
    (d / "test" / "hole" / "000.png").rename(d / "test" / "hole" / "trou n°1 画像.png")
    (d / "ground_truth" / "hole" / "000_mask.png").rename(d / "ground_truth" / "hole" / "trou n°1 画像_mask.png")

    csv = tmp_path / "r.csv"
    cats = (good, "no_defects", "no_train", "broken")
    with pytest.warns(UserWarning) as record:
        rc = main(run_args(root, csv, tmp_path, "--models", "cae", "--batch-size", "64", categories=cats))
    assert rc == 1
    messages = [str(w.message) for w in record]
    assert any("image AUROC is undefined" in m for m in messages)
    assert any("batch_size 64 is larger than the 7 training images" in m for m in messages)
    out, err = capsys.readouterr()
    assert "2 job(s) failed" in err and "Traceback" not in err
    failed = {line.split(":")[0].strip(): line for line in err.splitlines() if line.startswith("  ")}
    assert set(failed) == {"cae on no_train", "cae on broken"}
    assert "no training images" in failed["cae on no_train"]
    assert str(zero) in failed["cae on broken"] and "0 bytes" in failed["cae on broken"]

    table = read_results(csv).set_index("category")
    assert sorted(table.index) == sorted([good, "no_defects"])  # the name round-trips exactly
    assert 0 <= table.loc[good, "image_auroc"] <= 1 and table.loc[good, "batch_size"] == 7
    nd = table.loc["no_defects"]
    assert np.isnan(nd["image_auroc"]) and np.isnan(nd["f1"]) and np.isnan(nd["pixel_auroc"])
    assert nd["n_test"] == 3
    ckpt = tmp_path / "ck" / mvtec.dataset_name(root) / "wïdget_1"  # the space made file-system-safe
    assert len(list(ckpt.glob("cae-*.pt"))) == 1
