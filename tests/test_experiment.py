"""The grid and its CSV cache: complete rows, reruns that train nothing, force, failures, schemas."""
import math
import shutil
import threading

import pandas as pd
import pytest
import torch

import models
import pipeline.evaluate
import pipeline.grid
import pipeline.job
import pipeline.results
from helpers import make_tiny_mvtec
from models.errors import UserError
from models.scoring import ScoreConfig
from pipeline.checkpoints import load_checkpoint
from pipeline.evaluate import EvalConfig
from pipeline.grid import run_grid
from pipeline.results import COLUMNS, ResultsError, append_row, read_results
from pipeline.train import TrainConfig

# Tiny widths: the grid tests check plumbing, not accuracy.
TINY = {
    "cae": {"widths": (8, 16), "latent_dim": 16},
    "vae": {"widths": (8, 16), "latent_dim": 16},
    "vit_vae": {"patch_size": 8, "dim": 16, "depth": 1, "decoder_depth": 1, "heads": 2, "latent_dim": 4},
    "vae_grf": {"widths": (8, 16), "latent_channels": 4},
}
TRAIN = TrainConfig(epochs=1, batch_size=4, progress=False, num_threads=1)


def grid(root, csv, tmp, **kw):
    kw = {"categories": ["widget"], "models": list(TINY), "image_size": 32, "train": TRAIN,
          "model_overrides": TINY, "checkpoint_dir": tmp / "ck", "log": lambda m: None, **kw}
    return run_grid(root, kw.pop("categories"), kw.pop("models"), results_csv=csv, **kw)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One 1-epoch grid of all four models, shared by the tests below (they copy before changing)."""
    tmp = tmp_path_factory.mktemp("grid")
    root = make_tiny_mvtec(tmp / "data", categories=("widget",))
    csv = tmp / "results.csv"
    df = grid(root, csv, tmp)
    return root, csv, df, tmp


def test_grid_writes_four_complete_rows(shared):
    root, csv, df, tmp = shared
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


def test_rerun_trains_nothing_and_leaves_csv_byte_identical(shared, monkeypatch):
    root, csv, _, tmp = shared
    before, mtime = csv.read_bytes(), csv.stat().st_mtime_ns
    monkeypatch.setattr(pipeline.grid, "compute_job", lambda *a, **k: pytest.fail("a cached job was retrained"))
    df = grid(root, csv, tmp)
    assert df.attrs["ran"] == 0 and df.attrs["skipped"] == 4 and len(df) == 4
    assert csv.read_bytes() == before and csv.stat().st_mtime_ns == mtime


def test_force_and_deleting_the_csv_retrain(shared, tmp_path):
    root, csv, _, tmp = shared
    mine = tmp_path / "r.csv"
    shutil.copy(csv, mine)
    old = read_results(mine).set_index("model")
    df = grid(root, mine, tmp_path, models=["cae"], force=True)
    assert df.attrs["ran"] == 1
    new = read_results(mine).set_index("model")
    assert len(new) == 4  # replaced, not duplicated
    assert new.loc["cae", "config_hash"] == old.loc["cae", "config_hash"]
    assert new.loc["vae", "finished_at"] == old.loc["vae", "finished_at"]  # others untouched
    mine.unlink()
    df = grid(root, mine, tmp_path, models=["cae"])
    assert df.attrs["ran"] == 1 and len(read_results(mine)) == 1
    # same seed, same machine: the retrained row has the same metrics
    assert new.loc["cae", "image_auroc"] == pytest.approx(read_results(mine).iloc[0]["image_auroc"])


def test_failing_job_is_reported_and_the_grid_goes_on(shared, tmp_path, monkeypatch):
    root, _, _, _ = shared

    def nan_loss(self, x):
        return {"loss": (self.reconstruct(x) * float("nan")).mean()}

    monkeypatch.setattr(models.MODELS["vae"], "loss", nan_loss)
    logs = []
    df = grid(root, tmp_path / "r.csv", tmp_path, models=["vae", "cae"], log=logs.append)
    (failure,) = df.attrs["failures"]
    assert failure["model"] == "vae" and "epoch 1" in failure["error"] and "widget" in failure["error"]
    assert list(df["model"]) == ["cae"]
    assert any("vae on widget: FAILED" in line for line in logs)


def test_config_hash_covers_what_changes_results(shared):
    root = shared[0]

    def h(**kw):
        spec = dict(data_root=root, category="widget", model="cae", dataset="d", image_size=32,
                    train=TRAIN, model_overrides=TINY["cae"])
        spec.update(kw)
        return pipeline.job.JobSpec(**spec).config_hash()

    base = h()
    changed = [h(train=TrainConfig(epochs=2, batch_size=4)), h(train=TrainConfig(epochs=1, batch_size=4, seed=1)),
               h(image_size=64), h(eval_config=EvalConfig(threshold_rule="val_p99")), h(dataset="other"),
               h(category="fabric"), h(eval_config=EvalConfig(score=ScoreConfig(score_reduce="max"))),
               h(eval_config=EvalConfig(eval_size=128)), h(data_fingerprint="0123456789abcdef"),
               h(model="vae", model_overrides=TINY["vae"])]
    assert base not in changed and len(set(changed)) == len(changed)
    same = TrainConfig(epochs=1, batch_size=4, progress=True, num_threads=3, device="cpu")
    assert h(train=same) == base


def test_train_hash_covers_the_weights_and_not_the_evaluation(shared):
    root = shared[0]

    def spec(**kw):
        return pipeline.job.JobSpec(**{**dict(data_root=root, category="widget", model="cae", dataset="d",
                                              image_size=32, train=TRAIN, model_overrides=TINY["cae"]), **kw})

    base = spec()
    for ev in (EvalConfig(threshold_rule="val_p99"), EvalConfig(score=ScoreConfig(score_map="ssim")),
               EvalConfig(eval_size="original")):
        other = spec(eval_config=ev)
        assert other.train_hash() == base.train_hash() and other.config_hash() != base.config_hash()
    assert spec(data_fingerprint="0123456789abcdef").train_hash() != base.train_hash()
    assert spec(train=TrainConfig(epochs=1, batch_size=4, seed=1)).train_hash() != base.train_hash()


def test_corrupt_csv_is_an_error_and_left_untouched(shared, tmp_path):
    root = shared[0]
    for content in (b"dataset,category\n\"unterminated,1\n1,2,3,4,5\n", b"\xff\xfe\x00\x01garbage", b"a,b\n1,2\n", b""):
        bad = tmp_path / "bad.csv"
        bad.write_bytes(content)
        with pytest.raises(ResultsError, match="bad.csv"):
            grid(root, bad, tmp_path)
        with pytest.raises(UserError):
            read_results(bad)
        assert bad.read_bytes() == content


def test_older_schema_is_read_and_no_column_is_dropped(shared, tmp_path):
    _, csv, _, _ = shared
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    old = table.drop(columns=["aupro", "peak_memory_mb"]).iloc[:2].assign(legacy_note="kept")
    path = tmp_path / "old.csv"
    old.to_csv(path, index=False)
    df = read_results(path)
    assert df["aupro"].isna().all() and (df["legacy_note"] == "kept").all()
    row = read_results(csv).iloc[3].to_dict()
    assert append_row(path, row)
    assert not append_row(path, row)  # same key: not duplicated
    df = read_results(path)
    assert len(df) == 3 and "legacy_note" in df.columns and "peak_memory_mb" in df.columns
    assert df["aupro"].isna().sum() == 2 and df["aupro"].iloc[2] == pytest.approx(row["aupro"])
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    # the old rows' cells are kept exactly as written (the new columns are empty for them)
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in old.columns:
        assert text[col].iloc[:2].tolist() == old[col].tolist(), col


def test_concurrent_appends_lose_and_duplicate_nothing(shared, tmp_path):
    """Writers holding separate lock-file descriptions (as separate processes do) appending at once."""
    _, csv, _, _ = shared
    base = read_results(csv).iloc[0].to_dict()
    path = tmp_path / "c.csv"
    errors = []

    def writer(w):
        try:
            for i in range(15):
                append_row(path, {**base, "config_hash": f"w{w}-{i}"})
                append_row(path, {**base, "config_hash": "shared"})  # the same key from every writer
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hashes = read_results(path)["config_hash"].tolist()
    assert sorted(hashes) == sorted([f"w{w}-{i}" for w in range(3) for i in range(15)] + ["shared"])
    assert not list(tmp_path.glob(".c.csv.*.tmp"))  # no temp files left behind


def test_bad_parameters_fail_before_any_training(shared, tmp_path):
    root = shared[0]
    with pytest.raises(UserError, match="epochs"):
        grid(root, tmp_path / "r.csv", tmp_path, train=TrainConfig(epochs=0))
    with pytest.raises(UserError, match="unknown model"):
        grid(root, tmp_path / "r.csv", tmp_path, models=["nope"])
    with pytest.raises(UserError, match="unknown category"):
        grid(root, tmp_path / "r.csv", tmp_path, categories=["nope"])
    with pytest.raises(UserError, match="multiple|stride|patch|divisible"):
        grid(root, tmp_path / "r.csv", tmp_path, image_size=36)
    with pytest.raises(UserError, match="threshold rule"):
        grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(threshold_rule="test_max"))
    with pytest.raises(UserError, match="evaluation size"):
        grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(eval_size=8))
    with pytest.raises(UserError, match="score_map"):
        grid(root, tmp_path / "r.csv", tmp_path, eval_config=EvalConfig(score=ScoreConfig(score_map="l1")))
    with pytest.raises(UserError, match="evaluation setting"):
        grid(root, tmp_path / "r.csv", tmp_path, model_overrides={"cae": {"score_reduce": "max"}})
    with pytest.raises(UserError, match="seed"):
        grid(root, tmp_path / "r.csv", tmp_path, seeds=[0, -1])
    assert not (tmp_path / "r.csv").exists()


def test_score_split_is_batched_and_matches_the_model(shared):
    root = shared[0]
    torch.manual_seed(0)
    m = models.build_model("cae", image_size=32, **TINY["cae"]).eval()
    ds = models.MVTecAD(root, "widget", "test", image_size=32)
    maps, scores = pipeline.evaluate.score_split(m, ds, batch_size=3, device=torch.device("cpu"))
    x = ds.images.float() / 255
    assert torch.allclose(maps, m.anomaly_map(x), atol=1e-6)
    assert torch.allclose(scores, m.anomaly_score(x), atol=1e-6)
    assert not math.isnan(float(scores.sum()))
