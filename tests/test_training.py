"""fit(), seeding, devices and checkpoints, on tiny in-memory data."""
import math
import os
import pickle
from types import SimpleNamespace

import pytest
import torch

import models
from models.errors import CheckpointError, ConfigError, TrainingError
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.train import TrainConfig, batch_indices, fit, resolve_device, seed_everything

TINY_CAE = {"widths": (8, 16), "latent_dim": 16}


def fake_ds(n=10, size=32, seed=0, category="widget"):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return SimpleNamespace(images=images, category=category)


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
    g = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in batch_indices(9, 4, g)]
    assert sizes == [4, 4]
    assert [len(b) for b in batch_indices(9, 4)] == [4, 4, 1]  # evaluation keeps every image
    fit(tiny_cae(), fake_ds(9), None, cfg(epochs=1))  # would raise inside BatchNorm otherwise


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


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_round_trip_and_refusals(tmp_path):
    seed_everything(0)
    m = tiny_cae()
    fit(m, fake_ds(6), None, cfg(epochs=1))
    path = save_checkpoint(tmp_path / "ck" / "cae.pt", m, name="cae", row={"image_auroc": 0.5},
                           train_config=cfg(epochs=1))
    back = load_checkpoint(path, model="cae", config=m.config)
    x = fake_ds(2).images.float() / 255
    assert torch.allclose(back.anomaly_map(x), m.anomaly_map(x))
    assert back.checkpoint["row"] == {"image_auroc": 0.5} and back.checkpoint["train_config"]["epochs"] == 1

    with pytest.raises(CheckpointError, match="holds a cae model, not a vae"):
        load_checkpoint(path, model="vae")
    other = models.model_config("cae", image_size=32, widths=(8, 32), latent_dim=16)
    with pytest.raises(CheckpointError, match="different cae config: widths"):
        load_checkpoint(path, config=other)

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a checkpoint of this package"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")

    # A pickle that would run code on load is refused, and the code never runs.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": "cae", "config": {}, "state_dict": Evil(), "format": 1}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_on_epoch_is_called_after_every_epoch_with_the_history_so_far():
    seen = []
    cfg = TrainConfig(epochs=3, batch_size=4, progress=False, device="cpu")
    fit(models.build_model("cae", image_size=32, **TINY_CAE), fake_ds(), cfg=cfg,
        on_epoch=lambda epoch, history: seen.append((epoch, len(history["train_loss"]))))
    assert seen == [(1, 1), (2, 2), (3, 3)]
