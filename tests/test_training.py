"""fit(), seeding and devices, the step budget and repair training, on tiny in-memory data (batching
itself: test_batches.py; checkpoints: test_checkpoints.py; the defects themselves: test_defects.py)."""
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import models
import pipeline.train
from helpers import REPO, TINY, cae_run_args, fake_ds, refused, run_args
from models.base import accepts_target
from models.errors import ConfigError, TrainingError
from pipeline.__main__ import main
from pipeline.job import JobSpec, compute_job, evaluate_checkpoint, load_category
from pipeline.results import read_results
from pipeline.train import MAX_SEED, TrainConfig, fit, resolve_device, seed_everything

TINY_CAE = {"widths": (8, 16), "latent_dim": 16}


def cfg(**kw):
    return TrainConfig(**{"min_steps": 0, "epochs": 2, "batch_size": 4, "progress": False, "device": "cpu", **kw})


def tiny_cae():
    return models.build_model("cae", image_size=32, **TINY_CAE)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"epochs": -1}, {"batch_size": 0}, {"lr": 0.0}, {"lr": math.nan},
                                 {"lr_schedule": "step"}, {"device": "tpu"}, {"grad_clip": -1.0}])
def test_bad_train_config_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="training:"):
        TrainConfig(**bad).validate()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_fit_history_and_seeded_rerun_is_identical():
    train, val = fake_ds(10), fake_ds(3, seed=1)
    runs = []
    for _ in range(2):
        seed_everything(0)
        m = tiny_cae()
        h = fit(m, train, val, cfg())
        runs.append((h, m.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert len(h1["train_loss"]) == 2 and len(h1["val_loss"]) == 2
    assert all(math.isfinite(v) for v in h1["train_loss"] + h1["val_loss"])
    assert h1["steps"] == 2 * 3 and h1["terms"]["loss"] == h1["train_loss"][-1]
    assert h1["train_loss"] == h2["train_loss"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not m.training  # returned in eval mode


def test_batch_larger_than_dataset_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="using 5"):
        h = fit(tiny_cae(), fake_ds(5), None, cfg(epochs=1, batch_size=64))
    assert h["batch_size"] == 5 and math.isnan(h["val_loss"][0])


def test_trailing_batch_of_one_is_dropped_for_batchnorm():
    """9 images in batches of 4: the lone ninth would raise inside BatchNorm (batch_indices drops it)."""
    h = fit(tiny_cae(), fake_ds(9), None, cfg(epochs=1))
    assert h["steps"] == 2


def test_channels_last_fit_matches_nchw_on_cpu():
    """fit() trains conv models in NHWC on CPU too: the same model up to float rounding."""
    runs = {}
    for cl in (True, False):
        seed_everything(0)
        m = tiny_cae()
        h = fit(m, fake_ds(8, category="w"), None, cfg(channels_last=cl))
        weight = m.encoder.stages[0][0].weight
        runs[cl] = (h["train_loss"],
                    weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
    assert runs[True][1] and not runs[False][1]  # the layouts really differ
    assert np.allclose(runs[True][0], runs[False][0], rtol=1e-4)


def test_non_finite_loss_names_model_category_and_epoch(monkeypatch):
    m = tiny_cae()
    calls = {"n": 0}
    real = m.loss

    def loss_turning_nan(x):  # fine in epoch 1, NaN from epoch 2 on (3 steps per epoch)
        calls["n"] += 1
        out = real(x)
        return {"loss": out["loss"] * (float("nan") if calls["n"] > 3 else 1.0)}

    monkeypatch.setattr(m, "loss", loss_turning_nan)
    with pytest.raises(TrainingError, match=r"cae on 'widget'.*epoch 2"):
        fit(m, fake_ds(10), None, cfg(epochs=3))


def test_on_epoch_is_called_after_every_epoch_with_the_history_so_far():
    seen = []
    cfg = TrainConfig(min_steps=0, epochs=3, batch_size=4, progress=False, device="cpu")
    fit(models.build_model("cae", image_size=32, **TINY_CAE), fake_ds(), cfg=cfg,
        on_epoch=lambda epoch, history: seen.append((epoch, len(history["train_loss"]))))
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_the_largest_seed_is_accepted():
    assert MAX_SEED == 2**32 - 1
    TrainConfig(seed=MAX_SEED).validate()


# ---------------------------------------------------------------- the step budget (min_steps)


@pytest.mark.parametrize("bad", [{"min_steps": -1}, {"min_steps": 1.5}, {"min_steps": True}, {"repair": 1.5},
                                 {"repair": -0.1}, {"repair": math.nan}, {"defects": "scratch"}])
def test_bad_budget_and_repair_settings_are_one_sentence(bad):
    with pytest.raises(ConfigError, match=r"^training: [^\n]*\.$"):
        TrainConfig(**bad).validate()


def record_lrs(monkeypatch) -> list[float]:
    """The learning rate of every optimiser step fit takes from now on."""
    lrs, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return lrs


def test_min_steps_adds_epochs_and_the_cosine_schedule_spans_them(monkeypatch):
    lrs = record_lrs(monkeypatch)
    h = fit(tiny_cae(), fake_ds(10), fake_ds(3, seed=1), cfg(epochs=1, min_steps=10))  # 3 steps per epoch
    assert h["epochs"] == 4 and h["steps"] == 12 == len(lrs) and len(h["train_loss"]) == len(h["val_loss"]) == 4
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # still decaying at the last step: one schedule over all 12
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 * (0.01 + 0.495 * (1 + math.cos(
        math.pi * 11 / 12))))


def test_min_steps_below_the_epochs_budget_is_todays_training_exactly():
    runs = []
    for min_steps in (0, 5):  # 2 epochs x 3 steps already exceed 5
        seed_everything(0)
        m = tiny_cae()
        runs.append((fit(m, fake_ds(10), None, cfg(min_steps=min_steps)), m.state_dict()))
    (h0, s0), (h5, s5) = runs
    assert h0["epochs"] == h5["epochs"] == 2 and h0["steps"] == h5["steps"] == 6
    assert all(torch.equal(s0[k], s5[k]) for k in s0)


def job_spec(root, **train):
    return JobSpec(data_root=root, category="widget", model="cae", dataset="d", image_size=32,
                   category_type="object", model_overrides=TINY["cae"],
                   train=TrainConfig(**{"min_steps": 0, "epochs": 1, "batch_size": 4, "progress": False, **train}))


def test_new_settings_enter_the_keys_only_when_set(tmp_path):
    base = job_spec(tmp_path)  # the helper's min_steps=0: the training from before the step budget existed
    assert "min_steps" not in base.train.result_dict() and "repair" not in base.train.result_dict()
    assert TrainConfig().result_dict()["min_steps"] == TrainConfig().min_steps > 0  # the default budget is keyed
    # The defect kind means nothing while repair is off: one key for every kind.
    assert job_spec(tmp_path, repair=0.0, defects="texture").hashes == base.hashes
    assert job_spec(tmp_path, repair=0, min_steps=0).hashes == base.hashes
    changed = [job_spec(tmp_path, repair=0.5), job_spec(tmp_path, repair=0.5, defects="colour"),
               job_spec(tmp_path, repair=1.0), job_spec(tmp_path, min_steps=500),
               job_spec(tmp_path, min_steps=500, repair=0.5)]
    keys = [s.train_hash() for s in changed] + [base.train_hash()]
    assert len(set(keys)) == len(keys)
    assert len({s.config_hash() for s in [*changed, base]}) == len(keys)
    assert job_spec(tmp_path, repair=1).hashes == job_spec(tmp_path, repair=1.0).hashes  # one setting, one key


@pytest.mark.filterwarnings("ignore:the F1 threshold")
def test_the_row_says_the_epochs_run_and_the_steps_taken(tiny_mvtec):
    """widget: 8 train/good images, 7 after the val hold-out, batches of 4 -> 2 steps per epoch."""
    spec = job_spec(tiny_mvtec, min_steps=7)
    row = compute_job(spec, load_category(spec)).row
    assert row["steps"] == 8 and row["epochs"] == 4
    spec = job_spec(tiny_mvtec)
    row = compute_job(spec, load_category(spec)).row
    assert row["steps"] == 2 and row["epochs"] == 1


@pytest.mark.filterwarnings("ignore:the F1 threshold")
def test_a_checkpoint_older_than_the_steps_column_gives_its_row_the_steps_of_its_history(tiny_mvtec, tmp_path):
    spec = job_spec(tiny_mvtec, min_steps=5)
    data = load_category(spec)
    output = compute_job(spec, data)
    payload = torch.load(io.BytesIO(output.checkpoint), weights_only=True)
    for key in ("epochs", "steps"):  # what the training columns held before these two
        del payload["training"][key]
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    row = evaluate_checkpoint(spec, data, path).row
    assert row["steps"] == output.row["steps"] == 6
    assert row["epochs"] == spec.train.epochs  # the only epochs such a checkpoint knows: its config's


def test_rows_older_than_the_steps_column_read_it_as_missing(tmp_path):
    csv = tmp_path / "old.csv"
    # The committed table as a version before the column existed wrote it: every column but steps.
    pd.read_csv(REPO / "evaluation_results_all_models.csv").drop(columns="steps").to_csv(csv, index=False)
    assert "steps" not in csv.read_text().splitlines()[0].split(",")
    df = read_results(csv)
    assert "steps" in df.columns and df["steps"].isna().all() and len(df) > 0


# ---------------------------------------------------------------- repair training


def loss_spy(model, monkeypatch) -> list[tuple]:
    """Every (args, kwargs) ``model.loss`` is called with from now on."""
    calls, real = [], model.loss

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "loss", spy)
    return calls


def test_repair_feeds_corrupted_images_and_compares_with_the_clean_ones(monkeypatch):
    m = tiny_cae()
    calls = loss_spy(m, monkeypatch)
    fit(m, fake_ds(12), fake_ds(3, seed=1), cfg(repair=0.5))
    train = [(args[0], kwargs["target"]) for args, kwargs in calls if "target" in kwargs]
    val = [(args, kwargs) for args, kwargs in calls if "target" not in kwargs]
    assert len(train) == 2 * 3  # every training step ...
    assert len(val) == 2 and all(len(args) == 1 and not kwargs for args, kwargs in val)  # ... val: clean, plain loss
    images = fake_ds(12).images.float() / 255  # (12, C, H, W): what the batches are made of
    for x_in, target in train:
        changed = (x_in != target).flatten(1).any(dim=1)
        assert int(changed.sum()) == 2  # round(0.5 * 4) of each batch of 4
        assert (target[:, None] == images[None]).flatten(2).all(2).any(1).all()  # the target: clean images


def test_repair_zero_never_calls_the_generator_and_trains_as_today(monkeypatch):
    runs = []
    for repair, defects in ((0.0, "mixed"), (0.0, "texture")):
        seed_everything(0)
        m = tiny_cae()
        calls = loss_spy(m, monkeypatch)
        fit(m, fake_ds(10), None, cfg(repair=repair, defects=defects))
        assert all(len(args) == 1 and not kwargs for args, kwargs in calls)  # loss(x), as before repair existed
        runs.append(m.state_dict())
    monkeypatch.setattr(pipeline.train, "corrupt", lambda *a, **k: pytest.fail("corrupt called with repair 0"))
    seed_everything(0)
    m = tiny_cae()
    fit(m, fake_ds(10), None, cfg())
    assert all(torch.equal(runs[0][k], runs[1][k]) and torch.equal(runs[0][k], m.state_dict()[k]) for k in runs[0])


def test_repair_keeps_the_data_order_and_the_global_rng(monkeypatch):
    """The defects come from their own generator: the batches and torch's global stream are those
    of the run without repair."""
    seen = []
    real = pipeline.train.batch_indices
    monkeypatch.setattr(pipeline.train, "batch_indices", lambda *a: seen.append(real(*a)) or seen[-1])
    states = []
    for repair in (0.0, 0.5):
        seed_everything(0)
        fit(tiny_cae(), fake_ds(10), None, cfg(repair=repair))
        states.append(torch.get_rng_state())
    half = len(seen) // 2
    assert half and all(len(a) == len(b) and all(map(torch.equal, a, b)) for a, b in zip(seen[:half], seen[half:]))
    assert torch.equal(states[0], states[1])


class PlainLossCAE(models.MODELS["cae"]):
    """A model written before repair training: its loss takes x only."""

    def loss(self, x):
        return super().loss(x)


def test_a_model_without_a_target_trains_but_is_refused_repair(monkeypatch, tmp_path):
    assert accepts_target(models.MODELS["cae"]) and not accepts_target(PlainLossCAE)
    monkeypatch.setitem(models.MODELS, "plain", PlainLossCAE)
    model = models.build_model("plain", image_size=32, **TINY_CAE)
    assert len(fit(model, fake_ds(8), None, cfg(epochs=1))["train_loss"]) == 1
    with pytest.raises(ConfigError, match=r"^model 'plain' cannot be trained with repair 0\.5: .*loss\(x, "
                                          r"target=None\).*or set repair to 0\.$"):
        JobSpec(data_root=tmp_path, category="widget", model="plain", dataset="d", image_size=32,
                category_type="object", model_overrides=TINY["cae"], train=TrainConfig(repair=0.5))
    with pytest.raises(ConfigError, match="cannot be trained with repair"):
        fit(model, fake_ds(8), None, cfg(epochs=1, repair=0.5))


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("option, words", [(["--repair", "2"], "repair must be a fraction from 0 to 1"),
                                           (["--defects", "scratch"], "defects 'scratch' is unknown"),
                                           (["--min-steps", "-1"], "min_steps must be a whole number >= 0")])
def test_bad_repair_and_budget_options_exit_2_with_one_sentence(option, words, tiny_mvtec, tmp_path, capsys):
    assert main(cae_run_args(tiny_mvtec, tmp_path, *option)) == 2
    assert words in refused(capsys, tmp_path)


def test_run_with_repair_and_min_steps_writes_both_into_the_row(tiny_mvtec, tmp_path):
    csv = tmp_path / "r.csv"
    args = run_args(tiny_mvtec, csv, tmp_path, "--repair", "0.5", "--defects", "colour", "--min-steps", "5",
                    models=["cae"])
    assert main(args) == 0
    row = read_results(csv).iloc[0]
    assert row["steps"] == 6 and row["epochs"] == 3  # 7 training images in batches of 4: 2 steps per epoch
    train = json.loads(row["config_json"])["train"]
    assert (train["repair"], train["defects"], train["min_steps"]) == (0.5, "colour", 5)
