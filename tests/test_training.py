"""fit(), seeding and devices, on tiny in-memory data (batching itself: test_batches.py; checkpoints:
test_checkpoints.py)."""
import math

import numpy as np
import pytest
import torch

import models
from helpers import fake_ds
from models.errors import ConfigError, TrainingError
from pipeline.train import MAX_SEED, TrainConfig, fit, resolve_device, seed_everything

TINY_CAE = {"widths": (8, 16), "latent_dim": 16}


def cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "progress": False, "device": "cpu", **kw})


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
    cfg = TrainConfig(epochs=3, batch_size=4, progress=False, device="cpu")
    fit(models.build_model("cae", image_size=32, **TINY_CAE), fake_ds(), cfg=cfg,
        on_epoch=lambda epoch, history: seen.append((epoch, len(history["train_loss"]))))
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_the_largest_seed_is_accepted():
    assert MAX_SEED == 2**32 - 1
    TrainConfig(seed=MAX_SEED).validate()
