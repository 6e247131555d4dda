"""Checkpoints (pipeline/checkpoints.py): a round trip, and every file refused before it could
run code or exhaust memory (not a checkpoint, another model or config, code-running pickles,
truncated, tampered, inflating zip records); a damaged checkpoint skipped by the figures."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import models
from helpers import TINY, fake_ds, run_args
from models.errors import CheckpointError
from pipeline import checkpoints, report
from pipeline.__main__ import main
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.results import read_results
from pipeline.train import TrainConfig, fit, seed_everything

pytestmark = pytest.mark.usefixtures("fresh_memory_cache")  # conftest.py


def cfg(**kw):
    return TrainConfig(**{"min_steps": 0, "epochs": 2, "batch_size": 4, "progress": False, "device": "cpu", **kw})


def tiny_cae():
    return models.build_model("cae", image_size=32, **TINY["cae"])


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


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refusals_beyond_the_basics(tmp_path):
    """test_checkpoint_round_trip_and_refusals covers: not a checkpoint, another model, another
    config, a raw code-running pickle. Here: the usual torch.save (zip) form of a code-running
    file, a truncated checkpoint, a tampered state_dict, another image size."""
    m = models.build_model("cae", image_size=32, **TINY["cae"])
    good = save_checkpoint(tmp_path / "good.pt", m, name="cae")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": "cae", "config": m.config.to_dict(), "state_dict": {}, "row": Evil()}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    assert not marker.exists()

    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(cut)

    payload = torch.load(good, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = torch.zeros(3)
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match="does not match the cae model"):
        load_checkpoint(tampered)

    with pytest.raises(CheckpointError, match=r"different cae config: image_size=32 \(expected 64\)"):
        load_checkpoint(good, config=models.model_config("cae", image_size=64, **TINY["cae"]))


def inflating_checkpoint(tmp_path: Path, *, stored: bool) -> tuple[Path, object]:
    """A checkpoint of a tiny CAE whose first weight record is replaced by zeros (16 MiB deflated,
    a small file that inflates; or 4 MiB stored, far beyond the model)."""
    model = models.build_model("cae", image_size=32, **TINY["cae"])
    good = save_checkpoint(tmp_path / "good.pt", model, name="cae")
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as out:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                with out.open(record, "w", force_zip64=True) as f:
                    for _ in range(4 if stored else 16):
                        f.write(bytes(1 << 20))
            else:
                out.writestr(info, src.read(info))
    return crafted, model.config


@pytest.mark.parametrize("stored", [False, True], ids=["deflated", "stored"])
def test_a_checkpoint_that_declares_far_more_than_its_model_is_refused_before_unpacking(tmp_path, monkeypatch,
                                                                                       stored):
    crafted, config = inflating_checkpoint(tmp_path, stored=stored)
    loads = []
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(crafted, model="cae", config=config)
    message = str(e.value)
    assert str(crafted) in message and "MiB" in message and "--force" in message, message
    assert not loads  # refused from the zip's directory alone: nothing was unpacked
    if not stored:  # a record that inflates is refused even when the caller expects no config
        with pytest.raises(CheckpointError, match="uncompressed"):
            load_checkpoint(crafted, model="cae")
        assert not loads


def test_truncated_checkpoint_is_skipped_by_the_figures_with_a_note(root, tmp_path, capsys):
    csv, ck = tmp_path / "r.csv", tmp_path / "ck"
    assert main(run_args(root, csv, tmp_path, models=("cae", "vae"))) == 0
    rows = read_results(csv)
    vae_pt = report.find_checkpoint(rows[rows["model"] == "vae"].iloc[0], ck)
    vae_pt.write_bytes(vae_pt.read_bytes()[: vae_pt.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(vae_pt, model="vae")
    message = str(e.value)
    assert "damaged" in message and "--force" in message and "written by this package" not in message

    # The notebook's cells after training: the gallery of the other model, the GRF figures.
    paths = report.galleries(rows, root, tmp_path / "results", ck)
    assert [p.name for p in paths] == ["gallery_widget.png"] and paths[0].is_file()
    note = capsys.readouterr().out
    assert "vae on 'widget' is left out of the figures" in note and "damaged" in note
    paths = report.grf_figures(rows, root, tmp_path / "images", ck)
    assert [p.name for p in paths] == ["grf.png"]
    assert "damaged" in capsys.readouterr().out

    # What the message says works: --force retrains that job, and its checkpoint loads again.
    assert main(run_args(root, csv, tmp_path, "--force", models=("vae",))) == 0
    assert load_checkpoint(vae_pt, model="vae") is not None
