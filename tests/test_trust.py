"""Results a researcher can trust (issue 12): rows keyed by the data's content, train once and
evaluate many, pixel metrics at a declared resolution, float32 maps, seeds, side files."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import models
import pipeline.grid
import pipeline.job
from helpers import make_tiny_mvtec
from models import scoring
from models.scoring import ScoreConfig
from pipeline import metrics, report, runs
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig, maps_at
from pipeline.grid import run_grid
from pipeline.results import append_row, read_results
from pipeline.train import TrainConfig

TINY = {"cae": {"widths": (8, 16), "latent_dim": 16}, "vae_grf": {"widths": (8, 16), "latent_channels": 4}}
TRAIN = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1)


def grid(root, csv, ckpt, **kw):
    kw = {"categories": ["widget"], "models": ["cae"], "image_size": 32, "train": TRAIN, "model_overrides": TINY,
          "checkpoint_dir": ckpt, **kw}
    logs = []
    df = run_grid(root, kw.pop("categories"), kw.pop("models"), results_csv=csv, log=logs.append, **kw)
    return df, "\n".join(logs)


@pytest.fixture
def trainings(monkeypatch):
    """Counts the models trained (every training goes through job.train_model)."""
    calls = []
    real = pipeline.job.train_model

    def counting(spec, data, **kw):
        calls.append((spec.category, spec.model, spec.train.seed))
        return real(spec, data, **kw)

    monkeypatch.setattr(pipeline.job, "train_model", counting)
    return calls


def test_same_named_roots_with_different_images_never_share_rows(tmp_path, trainings):
    a = make_tiny_mvtec(tmp_path / "projA" / "data", categories=("widget",), seed=0)
    b = make_tiny_mvtec(tmp_path / "projB" / "data", categories=("widget",), seed=1)
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid(a, csv, ckpt)
    df_b, log = grid(b, csv, ckpt)
    assert "1 to train" in log and len(trainings) == 2  # projA's row was not reused for projB
    table = read_results(csv)
    assert len(table) == 2 and table["dataset"].nunique() == 1 and table["data_fingerprint"].nunique() == 2
    assert len(list(ckpt.rglob("*.pt"))) == 2  # two checkpoints, never one overwritten by the other
    # a copy of projA's folder (other mtimes, other place) is the same data: its row is reused
    copy = tmp_path / "copy" / "data"
    shutil.copytree(a, copy)
    _, log = grid(copy, csv, ckpt)
    assert "1 already in" in log and len(trainings) == 2


def test_a_changed_mask_retrains_exactly_its_category_and_says_why(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget", "fabric"))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid(root, csv, ckpt, categories=None)
    assert len(trainings) == 2
    mask = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    a = np.array(Image.open(mask))
    a[:3, :3] = 255
    Image.fromarray(a).save(mask)
    _, log = grid(root, csv, ckpt, categories=None)
    assert trainings[2:] == [("widget", "cae", 0)]  # fabric is unchanged: not retrained
    assert ("data of 'widget' changed since the row was written: 1 file differs (1 changed; "
            "first: ground_truth/scratch/000_mask.png); its jobs run again.") in log
    assert len(read_results(csv)) == 3  # the row of the old data is kept, a new one added


def test_an_evaluation_only_change_trains_nothing(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    first, _ = grid(root, csv, ckpt, models=["cae", "vae_grf"])
    assert len(trainings) == 2
    for ev in (EvalConfig(score=ScoreConfig.parse("ssim/2/max")), EvalConfig(eval_size=64),
               EvalConfig(eval_size="original", threshold_rule="val_p99")):
        df, log = grid(root, csv, ckpt, models=["cae", "vae_grf"], eval_config=ev)
        assert len(trainings) == 2, ev  # no training at all
        assert "0 to train, 2 to evaluate from their checkpoints" in log and "evaluating from checkpoint" in log
        assert df.attrs["evaluated"] == 2 and df.attrs["trained"] == 0
        assert set(df["train_hash"]) == set(first["train_hash"]) and not set(df["config_hash"]) & set(
            first["config_hash"])
        assert (df["score"] == ev.score.name).all() and (df["eval_size"] == str(ev.eval_size)).all()
        assert (df["train_seconds"].to_numpy() == first["train_seconds"].to_numpy()).all()  # the training it came from
    # The user's rule: without the CSV (or with --force) every job trains, checkpoints or not.
    grid(root, tmp_path / "new.csv", ckpt, models=["cae", "vae_grf"])
    assert len(trainings) == 4
    grid(root, csv, ckpt, models=["cae"], force=True)
    assert len(trainings) == 5


def test_a_new_mask_rule_re_evaluates_from_checkpoints_and_says_why(tmp_path, trainings, monkeypatch):
    """Masks are read only for evaluation: rows of an older mask rule get new keys and are
    re-evaluated from their checkpoints, never retrained, with one line saying why."""
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    monkeypatch.setattr(pipeline.job, "MASK_VERSION", 1)
    first, _ = grid(root, csv, ckpt, models=["cae", "vae_grf"])
    monkeypatch.undo()  # undoes the trainings counter too: count from here on
    calls = []
    monkeypatch.setattr(pipeline.job, "train_model", lambda *a, **k: calls.append(1))
    df, log = grid(root, csv, ckpt, models=["cae", "vae_grf"])
    assert not calls and df.attrs["evaluated"] == 2 and df.attrs["trained"] == 0
    assert "2 row(s) of these jobs were evaluated with masks read by an older rule" in log
    assert set(df["train_hash"]) == set(first["train_hash"]) and not set(df["config_hash"]) & set(first["config_hash"])
    assert all(json.loads(c)["mask_version"] == models.mvtec.MASK_VERSION for c in df["config_json"])
    _, again = grid(root, csv, ckpt, models=["cae", "vae_grf"])
    assert "older rule" not in again  # said once: the new rows are the current ones


def test_rows_under_another_dataset_name_are_explained(tmp_path, monkeypatch):
    """An earlier version named a root of MVTec category names 'mvtec_ad' whatever its folder:
    the rerun under the folder's name says why its jobs run again."""
    root = make_tiny_mvtec(tmp_path / "my_parts", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    monkeypatch.setattr(pipeline.grid, "dataset_name", lambda root: "mvtec_ad")  # the earlier naming
    grid(root, csv, ckpt)
    monkeypatch.undo()
    df, log = grid(root, csv, ckpt)
    assert (df["dataset"] == "my_parts").all() and df.attrs["trained"] == 1
    assert ("the rows of 'widget' with these files are in the CSV under the dataset name 'mvtec_ad', but this data "
            "root is named 'my_parts'") in log
    _, again = grid(root, csv, ckpt)
    assert "under the dataset name" not in again


def test_a_damaged_checkpoint_is_retrained_not_a_failure(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv, ckpt = tmp_path / "r.csv", tmp_path / "ck"
    grid(root, csv, ckpt)
    (path,) = ckpt.rglob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    df, log = grid(root, csv, ckpt, eval_config=EvalConfig(eval_size=64))
    assert "cannot use its checkpoint" in log and "training instead" in log
    assert len(trainings) == 2 and not df.attrs["failures"]


def test_rows_of_the_older_version_are_read_and_rerun_with_one_message(tmp_path, trainings):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget", "fabric"))
    csv = tmp_path / "r.csv"
    for category in ("widget", "fabric"):  # what version 1 wrote: no fingerprint, no train_hash, scoring in the model
        append_row(csv, {"dataset": "data", "category": category, "category_type": "custom", "model": "cae",
                         "image_auroc": 0.5, "seed": 0, "config_hash": f"old{category}",
                         "config_json": json.dumps({"hash_version": 1, "model": "cae"})})
    df, log = grid(root, csv, tmp_path / "ck", categories=None)
    assert log.count("older version") == 1 and "2 row(s)" in log
    assert len(trainings) == 2 and len(read_results(csv)) == 4  # old rows kept, new keys added


def test_eval_size_keeps_the_pixel_auroc_of_a_map_constant_per_region():
    """Maps upsampled bilinearly to 256 against masks read at 256 give the same pixel AUROC as
    at 128 when the map is constant per region (the ranking of regions is what counts)."""
    rng = np.random.default_rng(0)
    masks_128 = np.zeros((6, 128, 128), np.uint8)
    maps_128 = np.zeros((6, 128, 128), np.float32)
    for i in range(6):
        maps_128[i] = rng.uniform(0.0, 0.05)  # each image's own normal level
        if i >= 2:  # defective: a rectangle with a higher value (far enough above for its blurred rim too)
            y, x = rng.integers(10, 90, 2)
            masks_128[i, y : y + 20, x : x + 24] = 1
            maps_128[i, y : y + 20, x : x + 24] = rng.uniform(0.6, 0.85)
    maps_128[1] = 0.9  # a good image brighter than every defect: AUROC below 1, so the test can tell
    masks_256 = masks_128.repeat(2, axis=1).repeat(2, axis=2)  # the same regions read at 256
    up = maps_at(torch.from_numpy(maps_128), 256).numpy()
    assert up.shape == (6, 256, 256) and up.dtype == np.float32
    at_128, at_256 = metrics.pixel_auroc(masks_128, maps_128), metrics.pixel_auroc(masks_256, up)
    assert at_128 < 0.99 and at_256 == pytest.approx(at_128, abs=1e-12)


def test_masks_are_read_at_the_evaluation_size_and_at_their_own(tmp_path):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",), size=(40, 32))  # 40 x 32 px files
    ds = models.MVTecAD(root, "widget", "test", image_size=32)
    at_64 = ds.masks_at(64)
    assert at_64.shape == (len(ds), 64, 64) and at_64.dtype == torch.uint8
    original = ds.masks_at("original")
    assert [m.shape for m in original] == [(32, 40)] * len(ds)
    for i, path in enumerate(ds.mask_paths):
        if path is not None:  # the file itself, not an upsampled copy of the 32-px mask
            assert np.array_equal(original[i], (np.array(Image.open(path)) > 0).astype(np.uint8))
    maps = torch.rand(len(ds), 32, 32)
    up = maps_at(maps, "original", ds.original_sizes)
    assert [m.shape for m in up] == [(32, 40)] * len(ds)
    assert metrics.pixel_auroc(original, up) == pytest.approx(
        metrics.pixel_auroc(np.concatenate([m.ravel() for m in original]), np.concatenate([m.ravel() for m in up])))
    assert 0 <= metrics.aupro(original, up) <= 1


def test_maps_are_float32_under_autocast():
    torch.manual_seed(0)
    m = models.build_model("cae", image_size=32, **TINY["cae"]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = m.anomaly_map(x)
        scores = m.anomaly_score(x)
        x_hat = m.reconstruct(x)
        assert x_hat.dtype == torch.bfloat16  # the network itself did run in bf16
        blurred = scoring.anomaly_map(x, x_hat, score_sigma=4.0)
    assert maps.dtype == scores.dtype == blurred.dtype == torch.float32
    assert torch.equal(blurred, scoring.anomaly_map(x, x_hat, score_sigma=4.0))  # as if autocast were off
    assert maps.unique().numel() > 1000  # not a few hundred bf16 levels


def test_f1_floor_is_the_f1_of_calling_every_image_defective():
    for labels in ([0, 0, 1], [0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0, 0]):
        p = np.mean(labels)
        assert metrics.f1_floor(labels) == pytest.approx(2 * p / (1 + p))
        assert metrics.f1_floor(labels) == pytest.approx(metrics.f1_at_threshold(labels, np.zeros(len(labels)),
                                                                                 -1.0)["f1"])


def test_seeds_give_a_row_each_side_files_curves_and_verdicts(tmp_path):
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    csv = tmp_path / "r.csv"
    df, log = grid(root, csv, tmp_path / "ck", models=["cae", "vae_grf"], seeds=[0, 1])
    assert sorted(zip(df["model"], df["seed"])) == [("cae", 0), ("cae", 1), ("vae_grf", 0), ("vae_grf", 1)]
    assert "(seed 1)" in log
    per_image, missing = runs.read_runs(df, csv)
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


def test_a_checkpoint_folder_under_home_tilde_goes_home(tmp_path, monkeypatch):
    """``--checkpoint-dir ~/ck`` from a notebook (no shell to expand ~): the checkpoint is written
    to and found in the home folder, not in a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    root = make_tiny_mvtec(tmp_path / "data", categories=("widget",))
    df, _ = grid(root, tmp_path / "r.csv", "~/ck")
    assert len(list((tmp_path / "home" / "ck").rglob("*.pt"))) == 1 and not (tmp_path / "~").exists()
    assert report.find_checkpoint(df.iloc[0], "~/ck") is not None
