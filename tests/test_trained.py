"""A trained job found again (pipeline/trained.py): its row, its model from the checkpoint, its
scoring rule and threshold; and one sentence for every way a row or checkpoint does not fit."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from helpers import TINY, one_error_line
from models.errors import CheckpointError, ConfigError
from pipeline import trained
from pipeline.__main__ import main
from pipeline.checkpoints import save_checkpoint
from pipeline.job import config_hash
from pipeline.results import ResultsError, read_results


def test_a_row_gives_its_model_threshold_and_scoring_rule(grid_of_four):
    root, csv, df, tmp = grid_of_four
    for name in TINY:
        job = trained.load_trained(csv, category="widget", model=name, checkpoint_dir=tmp / "ck")
        row = df[df["model"] == name].iloc[0]
        assert job.name == name and job.category == "widget" and job.seed == 0 and job.dataset == row["dataset"]
        assert job.threshold == row["threshold"] and job.config_hash == row["config_hash"]
        assert job.eval_config.score.name == row["score"] and job.eval_config.threshold_rule == row["threshold_rule"]
        assert job.image_size == 32 and job.in_channels == 3 and job.batch_size == row["batch_size"]
        assert job.checkpoint == tmp / "ck" / row["dataset"] / "widget" / f"{name}-{row['train_hash']}.pt"
        assert not job.model.training and next(job.model.parameters()).device.type == "cpu"
        assert job.describe() == f"{name} on 'widget' (seed 0, dataset {row['dataset']})"


def test_a_checkpoint_alone_gives_the_row_its_training_stored(grid_of_four, tmp_path):
    _, csv, df, tmp = grid_of_four
    row = df[df["model"] == "cae"].iloc[0]
    by_row = trained.load_trained(csv, category="widget", model="cae", checkpoint_dir=tmp / "ck")
    job = trained.load_from_checkpoint(by_row.checkpoint)
    assert (job.threshold, job.config_hash, job.train_hash) == (row["threshold"], row["config_hash"], row["train_hash"])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(job.model.anomaly_map(x), by_row.model.anomaly_map(x))

    bare = save_checkpoint(tmp_path / "bare.pt", job.model, name="cae")  # no row: no threshold to predict with
    with pytest.raises(CheckpointError, match="holds no results row"):
        trained.load_from_checkpoint(bare)
    with pytest.raises(CheckpointError, match="does not exist"):
        trained.load_from_checkpoint(tmp_path / "nowhere.pt")


def rows(*specs) -> pd.DataFrame:
    """A results table of (category, model, seed, dataset, config_hash, finished_at) rows."""
    return pd.DataFrame([dict(category=c, model=m, seed=s, dataset=d, config_hash=h, finished_at=f, score="l2",
                              threshold_rule="val_max") for c, m, s, d, h, f in specs])


def test_select_row_narrows_by_seed_dataset_and_config_and_refuses_ambiguity():
    df = rows(("widget", "cae", 0, "demo", "aaa111", "2026-01-01"),
              ("widget", "cae", 1, "demo", "bbb222", "2026-01-02"),
              ("widget", "cae", 0, "demo", "ccc333", "2026-01-03"),
              ("fabric", "vae", 0, "demo", "ddd444", "x"), ("fabric", "vae", 0, "mvtec_ad", "eee555", "x"))
    with pytest.raises(ConfigError, match=r"no row of vae on 'widget' \(it holds widget/cae, fabric/vae\); train it"):
        trained.select_row(df, category="widget", model="vae")
    with pytest.raises(ConfigError, match=r"rows of cae on 'widget' for seeds 0, 1; pass one of them with --seed"):
        trained.select_row(df, category="widget", model="cae")
    with pytest.raises(ConfigError, match=r"no row of cae on 'widget' with seed 7; its seeds are 0, 1"):
        trained.select_row(df, category="widget", model="cae", seed=7)
    with pytest.raises(ConfigError, match=r"in several datasets \(demo, mvtec_ad\); pass one of them with --dataset"):
        trained.select_row(df, category="fabric", model="vae")
    assert trained.select_row(df, category="fabric", model="vae", dataset="mvtec_ad")["config_hash"] == "eee555"
    assert trained.select_row(df, category="widget", model="cae", seed=1)["config_hash"] == "bbb222"
    assert trained.select_row(df, category="widget", model="cae", config_hash="aaa")["config_hash"] == "aaa111"
    with pytest.raises(ConfigError, match="no row of cae on 'widget' with config_hash 'zzz'"):
        trained.select_row(df, category="widget", model="cae", config_hash="zzz")
    # Two configs of one seed (a rerun with another scoring rule): the latest, as the tables take it, said.
    with pytest.warns(UserWarning, match=r"2 rows of cae on 'widget' \(seed 0\).*latest, config_hash ccc333.*aaa111"):
        assert trained.select_row(df, category="widget", model="cae", seed=0)["config_hash"] == "ccc333"


def test_a_missing_checkpoint_says_where_it_was_looked_for_and_how_to_get_it(grid_of_four, tmp_path):
    _, csv, df, _ = grid_of_four
    with pytest.raises(CheckpointError) as info:
        trained.load_trained(csv, category="widget", model="vae", checkpoint_dir=tmp_path / "ck")
    msg = str(info.value)
    train_hash = df[df["model"] == "vae"].iloc[0]["train_hash"]
    assert str(tmp_path / "ck") in msg and f"vae-{train_hash}.pt" in msg and "\n" not in msg
    assert "--checkpoint-dir" in msg
    assert "python -m pipeline run --categories widget --models vae --seed 0 --force" in msg


def test_a_checkpoint_of_another_model_training_or_package_is_refused(grid_of_four, tmp_path):
    _, csv, _, tmp = grid_of_four
    ck = tmp_path / "ck"
    shutil.copytree(tmp / "ck", ck)
    cae = trained.load_trained(csv, category="widget", model="cae", checkpoint_dir=ck).checkpoint
    vae = trained.load_trained(csv, category="widget", model="vae", checkpoint_dir=ck).checkpoint
    payload = torch.load(cae, weights_only=True)
    payload["row"]["train_hash"] = "0123456789ab"  # the same model and config, trained on other data or seed
    torch.save(payload, cae)
    with pytest.raises(CheckpointError, match=r"holds the model of another training \(train_hash 0123456789ab\)"):
        trained.load_trained(csv, category="widget", model="cae", checkpoint_dir=ck)
    shutil.copy(vae, cae)
    with pytest.raises(CheckpointError, match="holds a vae model, not a cae"):
        trained.load_trained(csv, category="widget", model="cae", checkpoint_dir=ck)
    cae.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        trained.load_trained(csv, category="widget", model="cae", checkpoint_dir=ck)


def test_a_row_whose_config_was_edited_by_hand_is_refused(grid_of_four, tmp_path):
    _, csv, _, tmp = grid_of_four
    edited = tmp_path / "r.csv"
    text = csv.read_text()
    assert '""score_sigma"": 4.0' in text
    edited.write_text(text.replace('""score_sigma"": 4.0', '""score_sigma"": 2.0'))
    with pytest.raises(ResultsError, match="config_json does not hash to its config_hash"):
        trained.load_trained(edited, category="widget", model="cae", checkpoint_dir=tmp / "ck")
    row = read_results(csv).iloc[0].to_dict()
    with pytest.raises(ResultsError, match="has no config_json"):
        trained.job_from_row({**row, "config_json": float("nan")}, checkpoint_dir=tmp / "ck")


@pytest.mark.parametrize("args, message", [
    (["--model", "cae"], "name the trained job: --category C and --model M"),
    (["--category", "widget", "--model", "nope"], "has no row of nope on 'widget'"),
    (["--category", "widget", "--model", "cae", "--checkpoint", "x.pt"], "pass either --checkpoint, or --category"),
    (["--category", "widget", "--model", "cae", "--checkpoint-dir", "{tmp}/none"], "is not at"),
    (["--checkpoint", "{tmp}/none.pt"], "does not exist"),
])
def test_an_unknown_or_unusable_job_exits_2_with_one_sentence(grid_of_four, tmp_path, capsys, args, message):
    root, csv, _, _ = grid_of_four
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for command in (["predict", str(root / "widget" / "test")], ["export"]):
        out = tmp_path / ("out" if command[0] == "predict" else "m.onnx")
        assert main([*command, "--results-csv", str(csv), *args, "--out", str(out)]) == 2
        assert message in one_error_line(capsys.readouterr().err)
        assert not out.exists()


def test_a_row_trained_under_an_older_decoding_rule_is_used_with_a_note(grid_of_four):
    _, csv, _, tmp = grid_of_four
    row = read_results(csv).iloc[0].to_dict()
    config = json.loads(row["config_json"])
    config["decode_version"] -= 1  # a row of an earlier version, still consistent with its own hash
    row.update(config_json=json.dumps(config, sort_keys=True), config_hash=config_hash(config))
    with pytest.warns(UserWarning, match="trained on images decoded by rule .* new images are read a little"):
        job = trained.job_from_row(row, checkpoint_dir=tmp / "ck")
    assert job.config_hash == config_hash(config)
