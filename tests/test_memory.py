"""Memory (pipeline/memory.py): the estimate before training and evaluation, each refusal
naming the estimate and the largest size that fits (exit 2 before any image is decoded), only
for jobs that will run; and a job's measured peak."""
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.memory
from helpers import TINY, TINY_CAE_SET, cae_run_args, make_specs, refused
from models import MODEL_NAMES
from models.errors import ConfigError
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig
from pipeline.memory import check_fits, estimate, peak_memory_mb, reset_peak_memory

# ---------------------------------------------------------------- training


def test_an_image_size_no_machine_can_train_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    assert main(cae_run_args(root, tmp_path, "--image-size", "16384")) == 2  # a 69 G-parameter CAE: ~2 TiB
    err = refused(capsys, tmp_path)
    assert re.search(r"cae at 16384 px with batch 4 needs about [\d.]+ GiB to train \([\d,]+ M parameters", err)
    assert re.search(r"use --image-size \d+ or less", err)


def test_1024_px_on_a_smaller_machine_names_the_estimate_and_what_fits(root, tmp_path, capsys, no_data, monkeypatch):
    budget = 4 * 2**30
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: budget)  # a machine with 4 GiB free
    assert main(cae_run_args(root, tmp_path, "--image-size", "1024", "--batch-size", "8")) == 2
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
    assert main(cae_run_args(root, tmp_path, *TINY_CAE_SET)) == 0
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: 1)
    assert main(cae_run_args(root, tmp_path, *TINY_CAE_SET)) == 0
    assert main(cae_run_args(root, tmp_path, *TINY_CAE_SET, "--epochs", "2", "--min-steps", "0")) == 2  # a new job is


def test_memory_estimate_and_suggestion_keep_the_aspect():
    wide = estimate("cae", image_size=(64, 160), batch_size=4, overrides=TINY["cae"])
    square = estimate("cae", image_size=64, batch_size=4, overrides=TINY["cae"])
    assert wide.activation_bytes > 2 * square.activation_bytes  # 2.5x the pixels
    with pytest.raises(ConfigError, match=r"--image-size \d+x\d+ or less"):
        check_fits("cae", image_size=(128, 320), batch_size=4, device=torch.device("cpu"),
                   overrides=TINY["cae"], available=wide.total_bytes)


# ---------------------------------------------------------------- evaluation


def test_an_eval_size_no_machine_can_hold_exits_2_before_any_data_is_read(root, tmp_path, capsys, no_data):
    # 6 test images at 65536 x 65536 px: about 24 B per pixel, over 600 GB; the training at 32 px fits
    assert main(cae_run_args(root, tmp_path, "--eval-size", "65536")) == 2
    err = refused(capsys, tmp_path)
    assert re.search(r"evaluating 'widget' at --eval-size 65536 needs about [\d.]+ GiB of memory \(6 test images "
                     r"at 65536 px: their maps, masks and the pixel metrics' buffers, about 24 bytes per pixel\), "
                     r"more than the [\d.]+ GiB available; use --eval-size \d+ or less\.", err), err


def test_8192_px_on_a_smaller_machine_names_an_eval_size_that_fits(root, tmp_path, capsys, no_data, monkeypatch):
    budget = 4 * 2**30
    monkeypatch.setattr(pipeline.memory, "available_bytes", lambda device: budget)
    assert main(cae_run_args(root, tmp_path, "--eval-size", "8192")) == 2  # 6 x 8192^2 px x 24 B = 9 GiB
    err = refused(capsys, tmp_path)
    assert "needs about 9.0 GiB of memory" in err and "more than the 4.0 GiB available" in err
    size = int(re.search(r"--eval-size (\d+) or less", err).group(1))
    per_pixel = pipeline.memory.EVAL_BYTES_PER_PIXEL
    assert 6 * size**2 * per_pixel <= budget < 6 * (size + 16) ** 2 * per_pixel  # the largest that fits
    original = make_specs(root, ["widget"], ["cae"], image_size=32,
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


# ---------------------------------------------------------------- a job's peak


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_per_job():
    """A big allocation before the job does not count in the job's peak_memory_mb."""
    big = np.ones(2**27 // 8)  # 128 MB, touched
    big += 1
    del big
    reset_peak_memory(torch.device("cpu"))
    peak = peak_memory_mb(torch.device("cpu"))
    current = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert math.isfinite(peak) and peak < current + 64
