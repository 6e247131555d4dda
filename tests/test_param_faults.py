"""Parameter cases of docs/faults.md (issue 13), each reproduced the way a user meets it: the
real command line in-process on a tiny dataset written to disk, its exit status, its one
sentence on stderr, and (for a refusal) that no image was read and nothing trained."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

import pipeline.grid
import pipeline.memory
from helpers import make_tiny_mvtec
from models import MODEL_NAMES
from models.layers import BatchNorm2d
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig
from pipeline.memory import check_fits, estimate
from pipeline.train import MAX_SEED, TrainConfig, batch_indices

SMALL = ["--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16"]  # a fast CAE where the size does not matter


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_mvtec(tmp_path_factory.mktemp("param_faults"), categories=("widget",))


def run_args(root, tmp_path, *extra):
    return ["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--results-csv", str(tmp_path / "r.csv"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--no-progress", "--num-threads", "1", *extra]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the grid decodes any image (a refusal must come before)."""
    monkeypatch.setattr(pipeline.grid, "load_category", lambda *a, **k: pytest.fail("data was read"))


def refused(capsys, tmp_path) -> str:
    """The one sentence of a refusal; nothing was written."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(".")
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "ck").exists()
    return err


# Item 9: the documented minimum image size, with batch size 1.

def test_image_size_16_with_batch_size_1_trains_cae_and_vae(root, tmp_path):
    # 16 px: the CAE's and VAE's 4 encoder stages end in a 1x1 map, where a batch of one image
    # gave BatchNorm a single value per channel ("Expected more than 1 value per channel").
    assert main(run_args(root, tmp_path, "--models", "cae", "vae", "--image-size", "16", "--batch-size", "1")) == 0
    rows = pd.read_csv(tmp_path / "r.csv")
    assert sorted(rows["model"]) == ["cae", "vae"] and rows["image_auroc"].notna().all()


def test_batchnorm_is_unchanged_wherever_torch_could_train_it():
    """The fix touches only the one-value case: elsewhere outputs, running statistics and
    state_dict keys are torch's own (committed results stay reproducible)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2)
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert torch.equal(ours(x), theirs(x)) and torch.equal(ours.running_var, theirs.running_var)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    one = torch.randn(1, 3, 1, 1)
    assert torch.equal(ours(one), ours.eval()(one))  # one value: normalised as in evaluation


def test_batch_size_1_uses_every_image_and_a_lone_last_image_is_still_dropped():
    g = torch.Generator().manual_seed(0)
    assert len(batch_indices(7, 1, g)) == 7  # before: the last image of each epoch was skipped
    assert [len(b) for b in batch_indices(9, 4, g)] == [4, 4]  # unchanged (committed results rely on it)


# Item 11: a device the machine does not have.

@pytest.mark.skipif(bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_unavailable_mps_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    assert main(run_args(root, tmp_path, "--device", "mps")) == 2
    assert "device 'mps' was requested but MPS is not available" in refused(capsys, tmp_path)


# Item 12: seeds that torch cannot tell apart.

@pytest.mark.parametrize("seeds", [
    ["--seed", str(2**64)],  # was a raw "ValueError: Overflow when unpacking long long" per job
    ["--seed", str(2**63)],  # was silently seed 0's results under another config_hash
    ["--seeds", "0", str(2**32)],  # 2**32 = 0 for torch
    ["--seed", "-1"],
])
def test_a_seed_outside_0_to_2_32_exits_2_with_one_sentence(root, tmp_path, capsys, no_data, seeds):
    assert main(run_args(root, tmp_path, *seeds)) == 2
    err = refused(capsys, tmp_path)
    assert "training: seed must be a whole number from 0 to 4294967295" in err and seeds[-1] in err


def test_the_largest_seed_is_accepted():
    assert MAX_SEED == 2**32 - 1
    TrainConfig(seed=MAX_SEED).validate()


# Item 14: --set of a model that is not run.

@pytest.mark.parametrize("setting, message", [
    ("vae.latnt=3", "vae has no setting 'latnt'"),
    ("vae.latent_dim=1.5", "vae: latent_dim must be a whole number"),
    ("vit_vae.patch_size=5", "vit_vae: image_size 32 is not a multiple of patch_size 5"),
])
def test_set_of_a_model_that_is_not_run_is_checked(root, tmp_path, capsys, no_data, setting, message):
    assert main(run_args(root, tmp_path, "--models", "cae", "--set", setting)) == 2
    assert message in refused(capsys, tmp_path)


# Item 15: figures from a CSV holding several configs of one (category, model).

def test_figures_say_which_config_is_drawn_and_how_many_rows_were_left_out(root, tmp_path, monkeypatch):
    assert main(run_args(root, tmp_path, *SMALL)) == 0
    assert main(run_args(root, tmp_path, *SMALL, "--epochs", "2")) == 0
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


# Item 17: an image size the machine cannot train at.

def test_an_image_size_no_machine_can_train_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    assert main(run_args(root, tmp_path, "--image-size", "16384")) == 2  # a 69 G-parameter CAE: ~2 TiB
    err = refused(capsys, tmp_path)
    assert re.search(r"cae at 16384 px with batch 4 needs about [\d.]+ GiB to train \([\d,]+ M parameters", err)
    assert re.search(r"use --image-size \d+ or less", err)


def test_1024_px_on_a_smaller_machine_names_the_estimate_and_what_fits(root, tmp_path, capsys, no_data, monkeypatch):
    budget = 4 * 2**30
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: budget)  # a machine with 4 GiB free
    assert main(run_args(root, tmp_path, "--image-size", "1024", "--batch-size", "8")) == 2
    err = refused(capsys, tmp_path)
    assert "cae at 1024 px with batch 8 needs about" in err and "(271 M parameters" in err
    assert "more than the 4.0 GiB available on cpu" in err
    size = int(re.search(r"--image-size (\d+) or less", err).group(1))
    assert estimate("cae", image_size=size, batch_size=8).total_bytes <= budget  # the suggestion fits
    assert estimate("cae", image_size=size + 16, batch_size=8).total_bytes > budget  # and is the largest


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normal_runs_fit_a_24_gb_machine(name):
    for size in (128, 256):
        check_fits(name, image_size=size, batch_size=8, device=torch.device("cpu"), available=24 * 10**9)
        check_fits(name, image_size=size, batch_size=8, device=torch.device("cuda"), available=24 * 10**9)


def test_a_finished_grid_is_not_checked_again(root, tmp_path, monkeypatch):
    """Only jobs that will train are estimated: rerunning a done grid on a smaller machine (to
    print its table) is not refused."""
    assert main(run_args(root, tmp_path, *SMALL)) == 0
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: 1)
    assert main(run_args(root, tmp_path, *SMALL)) == 0
    assert main(run_args(root, tmp_path, *SMALL, "--epochs", "2")) == 2  # a new job is


# Issue 20: a list option given twice.

def test_repeated_list_options_accumulate(root, tmp_path):
    args = run_args(root, tmp_path, *SMALL, "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16")
    args += ["--models", "vae", "--seeds", "0", "--seeds", "1", "--categories", "widget", "--categories", "widget"]
    assert main(args) == 0  # "--models cae" (in run_args) and "--models vae": both run, as they read
    rows = pd.read_csv(tmp_path / "r.csv")
    assert sorted(zip(rows["model"], rows["seed"])) == [("cae", 0), ("cae", 1), ("vae", 0), ("vae", 1)]


# Issue 20: an evaluation size whose pixel metrics cannot fit in memory.

def test_an_eval_size_no_machine_can_hold_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    # 6 test images at 65536 x 65536 px: about 24 B per pixel, over 600 GB; the training at 32 px fits
    assert main(run_args(root, tmp_path, "--eval-size", "65536")) == 2
    err = refused(capsys, tmp_path)
    assert re.search(r"evaluating 'widget' at --eval-size 65536 needs about [\d.]+ GiB of memory \(6 test images "
                     r"at 65536 px: their maps, masks and the pixel metrics' buffers, about 24 bytes per pixel\), "
                     r"more than the [\d.]+ GiB available; use --eval-size \d+ or less\.", err), err


def test_8192_px_on_a_smaller_machine_names_an_eval_size_that_fits(root, tmp_path, capsys, no_data, monkeypatch):
    budget = 4 * 2**30
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: budget)
    assert main(run_args(root, tmp_path, "--eval-size", "8192")) == 2  # 6 x 8192^2 px x 24 B = 9 GiB
    err = refused(capsys, tmp_path)
    assert "needs about 9.0 GiB of memory" in err and "more than the 4.0 GiB available" in err
    size = int(re.search(r"--eval-size (\d+) or less", err).group(1))
    per_pixel = pipeline.memory.EVAL_BYTES_PER_PIXEL
    assert 6 * size**2 * per_pixel <= budget < 6 * (size + 16) ** 2 * per_pixel  # the largest that fits
    original = pipeline.grid.make_specs(root, ["widget"], ["cae"], image_size=32,
                                        eval_config=EvalConfig(eval_size="original"))
    assert pipeline.memory.evaluation_pixels(original[0]) == (6, 6 * 32 * 32)  # each file at its own size
    pipeline.memory.check_evaluation(original, available=budget)  # fits


def test_the_evaluation_estimate_is_not_below_what_the_metrics_allocate():
    """EVAL_BYTES_PER_PIXEL against tracemalloc's peak of the pixel-metric step (numpy reports
    its allocations to it; torch's upsampled maps are counted by hand): 4 images at 256 px."""
    import tracemalloc

    import numpy as np

    from pipeline import evaluate, stats

    n, size = 4, 256
    masks = np.zeros((n, size, size), np.uint8)
    masks[2:, 64:128, 64:128] = 1
    test_maps = torch.rand(n, 64, 64)
    tracemalloc.start()
    eval_maps = evaluate.maps_at(test_maps, size).numpy()
    stats.pixel_histograms(masks, eval_maps, stats.histogram_edges(eval_maps))
    evaluate.compute_metrics(np.array([0, 0, 1, 1]), masks, eval_maps, torch.rand(n), torch.rand(3), "val_max")
    peak = tracemalloc.get_traced_memory()[1] + eval_maps.nbytes + 2 * masks.nbytes  # + the maps, masks and cache
    tracemalloc.stop()
    assert peak <= pipeline.memory.EVAL_BYTES_PER_PIXEL * n * size * size
