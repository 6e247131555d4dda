"""How fast ``predict`` is on the CPU, and where its time goes.

    python bench/bench_predict.py [--images 200] [--size 128] [--model cae] [--num-threads 1]
                                  [--batch-size B] [--repeats 3] [--keep DIR]

Trains one job of MODEL at its default settings for one epoch on a small generated category at
SIZE px (not timed: predict needs a row and a checkpoint, not a good model), writes IMAGES
generated SIZE x SIZE PNGs (smooth patterns with noise, a bright square in every fourth) to a
temporary folder, and runs ``pipeline.predict.predict_images`` on them as ``python -m pipeline
predict`` does: with heatmaps, without, and with heatmaps at PIL's default PNG compression
(level 6) instead of ours (``heatmaps.PNG_COMPRESS_LEVEL``). For each it prints images per
second and the share of the run spent decoding, in the model and drawing heatmaps; the heatmap
share is split into drawing (upsampling, colouring, contour) and PNG writing by timing those
steps alone on the same maps. ``--num-threads N`` sets torch's threads and the decoding and
drawing threads (``workers``). Each figure is the best of ``--repeats`` runs (a shared machine
is noisy); the files' first read is not timed (a warm-up run), so decoding is from the page cache.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import mvtec
from pipeline import heatmaps, image_files, predict, trained
from pipeline.grid import GridConfig, Settings, run_grid
from pipeline.train import TrainConfig


def smooth_image(rng, size: int, defect: bool) -> np.ndarray:
    """uint8 (size, size, 3): a smooth colour pattern with noise; a bright square if ``defect``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)[:, None, None]
    img = 0.5 + 0.25 * np.sin(2 * np.pi * (3 * xx + phase)) * np.cos(2 * np.pi * 2 * yy)  # (3, S, S)
    img = img.transpose(1, 2, 0) + rng.normal(0, 0.02, (size, size, 3))
    if defect:
        q = size // 6
        y0, x0 = rng.integers(0, size - q, 2)
        img[y0:y0 + q, x0:x0 + q] = 0.95
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def write_category(root: Path, size: int, rng) -> None:
    """A category 'part' in MVTec layout: 24 train/good, 4 test/good, 4 test/spot images (masks left out)."""
    for folder, n, defect in (("train/good", 24, False), ("test/good", 4, False), ("test/spot", 4, True)):
        (root / "part" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(smooth_image(rng, size, defect)).save(root / "part" / folder / f"{i:03d}.png")


def trained_job(tmp: Path, model: str, size: int) -> trained.TrainedJob:
    rng = np.random.default_rng(0)
    write_category(tmp / "data", size, rng)
    config = GridConfig(data_root=tmp / "data", categories=["part"], models=[model], image_size=size,
                        train=TrainConfig(epochs=1, progress=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing masks, few val images: the bench needs a row, not a good one
        run_grid(config, Settings(results_csv=tmp / "r.csv", checkpoint_dir=tmp / "ck", log=lambda m: None))
    return trained.load_trained(tmp / "r.csv", category="part", model=model, checkpoint_dir=tmp / "ck")


def timed_run(job, images, out, *, repeats: int, **kw) -> predict.PredictionRun:
    """The fastest of ``repeats`` runs (each into a fresh folder)."""
    best = None
    for k in range(repeats):
        mvtec.clear_memory_cache()
        run = predict.predict_images(job, images, out / str(k), progress=False, **kw)
        if best is None or run.seconds.total < best.seconds.total:
            best = run
    return best


def drawing_and_png_seconds(job, images: list[Path]) -> tuple[float, float]:
    """Seconds to draw every heatmap (upsample, colour, contour) and to write their PNGs, apart."""
    decoded = [predict.decode_for_prediction(p, job.image_size, job.in_channels) for p in images]
    x = torch.from_numpy(np.stack([d.pixels for d in decoded])).float() / 255
    maps = job.model.anomaly_map(x, job.eval_config.score)
    scale = heatmaps.colour_scale(job.threshold)
    t0 = time.perf_counter()
    drawn = []
    for d, m in zip(decoded, maps):
        height, width = d.image.shape[-2:]
        drawn.append(heatmaps.overlay(d.image.transpose(1, 2, 0), heatmaps.map_at_image_size(m, (width, height)),
                                      threshold=job.threshold, scale=scale))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for k, rgb in enumerate(drawn):
            Image.fromarray(rgb).save(Path(folder) / f"{k}.png", compress_level=heatmaps.PNG_COMPRESS_LEVEL)
    return t1 - t0, time.perf_counter() - t1


def report(label: str, run: predict.PredictionRun) -> None:
    s = run.seconds
    share = lambda x: f"{100 * x / s.total:5.1f} %"
    print(f"{label:34s} {len(run.predictions) / s.total:8.1f} {share(s.decode)} {share(s.model)} "
          f"{share(s.heatmaps)} {share(s.total - s.decode - s.model - s.heatmaps)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=128, help="px of the model's input and of the images")
    p.add_argument("--model", default="cae")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="inference batch (default: the row's, as predict)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    args = p.parse_args()
    torch.set_num_threads(args.num_threads)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        job = trained_job(tmp, args.model, args.size)
        rng = np.random.default_rng(1)
        folder = tmp / "images"
        folder.mkdir(exist_ok=True)
        for i in range(args.images):
            Image.fromarray(smooth_image(rng, args.size, i % 4 == 3)).save(folder / f"{i:04d}.png")
        images = image_files.find_images([folder])
        kw = dict(batch_size=args.batch_size, workers=args.num_threads, repeats=args.repeats)
        predict.predict_images(job, images, tmp / "warm", progress=False, workers=args.num_threads)  # page cache
        params = sum(q.numel() for q in job.model.parameters())
        print(f"{args.images} images of {args.size} x {args.size} px, {job.name} (default settings, {params} "
              f"parameters), batch {args.batch_size or job.batch_size}, {torch.get_num_threads()} torch threads, "
              f"{args.num_threads} decode/draw threads")
        print(f"{'run':34s} {'images/s':>8s} {'decode':>7s} {'model':>7s} {'heatmaps':>7s} {'other':>7s}")
        report("predict (heatmaps)", timed_run(job, images, tmp / "with", **kw))
        report("predict --no-heatmaps", timed_run(job, images, tmp / "without", write_heatmaps=False, **kw))
        level = heatmaps.PNG_COMPRESS_LEVEL
        heatmaps.PNG_COMPRESS_LEVEL = 6
        report("heatmaps at PNG level 6 (PIL's)", timed_run(job, images, tmp / "level6", **kw))
        heatmaps.PNG_COMPRESS_LEVEL = level
        draw, png = drawing_and_png_seconds(job, images)
        print(f"heatmaps alone, one thread: drawing {1000 * draw / len(images):.2f} ms/image, PNG (level {level}) "
              f"{1000 * png / len(images):.2f} ms/image")


if __name__ == "__main__":
    main()
