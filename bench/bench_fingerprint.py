"""Data-fingerprint benchmark (issue 12): what fingerprinting a category costs next to loading it.

    python bench/bench_fingerprint.py [--dev ../shared/data/dev] [--synthetic /tmp/bench_fingerprint_mvtec]
                                      [--n-images 300] [--repeats 3]

Per category it measures, wall-clock on a shared machine (noisy; the load average is printed):
  fingerprint cold   ``data_fingerprint`` with the in-process memo cleared: list, stat, read and hash every file;
  fingerprint warm   again with the memo filled: one stat per file, nothing read;
  load x3 splits     the first uncached load: ``MVTecAD`` train, val and test at 128 px with
                     ``memory_cache=False`` (train/good is decoded twice, for train and for val);
  load_category      ``pipeline.job.load_category`` after ``clear_memory_cache()``, as the grid loads
                     a category (each file decoded once);
and the fingerprint's share of each load (wall time; for load_category also CPU time).

The OS page cache matters for both: the dev data (read-only, shared) is measured as it is,
warm in the page cache after the first read (``fincore`` says how much is resident). The
synthetic MVTec-sized category (1024 x 1024 RGB PNGs of ~1 MB, like MVTec AD's, written once
under /tmp and reused) is measured page-cache warm and also page-cache cold: its files are
evicted with ``posix_fadvise(DONTNEED)`` (no root needed; only our own files) before the
fingerprint and again before the load. Its per-byte and per-file costs are scaled to the
whole of MVTec AD (``MVTEC_FILES`` files, ``MVTEC_BYTES`` bytes).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

import models
from models import filehash, mvtec
from pipeline import fingerprint
from pipeline.job import JobSpec, load_category

MVTEC_FILES = 5000  # images and masks of all 15 MVTec AD categories, about
MVTEC_BYTES = 4.9e9
IMAGE_SIZE = 128
SYNTHETIC_CATEGORY = "synthetic"
SYNTHETIC_SIDE = 1024


# --------------------------------------------------------------------------- the synthetic category


def _photo_like(rng: np.random.Generator, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """(1024 x 1024 RGB uint8, mask) with a PNG size of ~1 MB, like an MVTec AD photo: smooth
    shading plus sensor noise (sigma 0.6 grey levels gives MVTec's compressibility)."""
    side = SYNTHETIC_SIDE
    y, x = np.mgrid[0:side, 0:side] / side
    phase = rng.uniform(0, 2 * np.pi, 3)
    shading = 128 + 60 * np.sin(2 * np.pi * (3 * x[None] + phase[:, None, None])) * np.cos(4 * np.pi * y[None])
    image = shading.transpose(1, 2, 0) + rng.normal(0, 0.6, (side, side, 3))
    mask = np.zeros((side, side), np.uint8)
    if defect:
        y0, x0 = rng.integers(0, side - 128, 2)
        mask[y0 : y0 + 96, x0 : x0 + 96] = 255
        image[mask > 0] = 240
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_synthetic_category(root: Path, n_images: int) -> Path:
    """``root/synthetic`` in MVTec layout: 2/3 train/good, then test/good and test/crack (with
    ground_truth masks) half and half. Written once; reused while its image count matches."""
    folder = root / SYNTHETIC_CATEGORY
    n_train = 2 * n_images // 3
    n_good = (n_images - n_train) // 2
    n_defect = n_images - n_train - n_good
    plan = [("train/good", i, False) for i in range(n_train)] + [("test/good", i, False) for i in range(n_good)]
    plan += [("test/crack", i, True) for i in range(n_defect)]
    if folder.is_dir() and sum(1 for _ in folder.glob("t*/*/*.png")) == n_images:
        return root
    shutil.rmtree(folder, ignore_errors=True)

    def write(seed: int) -> None:
        sub, i, defect = plan[seed]
        image, mask = _photo_like(np.random.default_rng(seed), defect)
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / sub / f"{i:03d}.png")
        if defect:
            (folder / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / "ground_truth" / "crack" / f"{i:03d}_mask.png")

    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, range(len(plan))))
    print(f"wrote {len(plan)} synthetic images (+ {n_defect} masks) in {time.perf_counter() - start:.0f} s", flush=True)
    return root


# --------------------------------------------------------------------------- the page cache


def evict_from_page_cache(paths) -> None:
    """Drop these files' pages from the OS page cache: written back first (fsync; dirty pages
    cannot be dropped), then ``POSIX_FADV_DONTNEED``. Needs no root; touches only these files."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_share(paths) -> str:
    """How much of these files is in the page cache, from util-linux ``fincore`` ("?" without it)."""
    paths = [str(p) for p in paths]
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *paths],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    resident = total = 0
    for line in out.split("\n"):
        if line.strip():
            res, size = line.split()
            resident, total = resident + int(res), total + int(size)
    return f"{min(100.0, 100 * resident / max(total, 1)):.0f}%"  # RES counts whole pages: can pass SIZE


# --------------------------------------------------------------------------- timing


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of ``fn()``. CPU time is less swayed
    than wall time by the other users of a shared machine, so the ratio is given in both."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _load_three_splits(root, category) -> None:
    for split in ("train", "val", "test"):
        models.MVTecAD(root, category, split, image_size=IMAGE_SIZE, memory_cache=False)


def measure(root: Path, category: str, repeats: int, evict: bool) -> dict:
    """Fingerprint (cold memo, warm memo) and first-load (wall, CPU) seconds of one category; with
    ``evict`` the files are dropped from the page cache before each cold fingerprint and each load."""
    paths = list(fingerprint.category_files(root, category).values())
    drop = (lambda: evict_from_page_cache(paths)) if evict else (lambda: None)
    if not evict:
        for path in paths:  # the state measured: every file in the page cache
            filehash.hash_file(path)

    def cold_fingerprint() -> tuple[tuple[float, float], str]:
        """((wall, CPU) seconds, page-cache residency just before)."""
        filehash.clear_memo()
        drop()
        resident = resident_share(paths)
        return _timed(lambda: fingerprint.data_fingerprint(root, category)), resident

    cold_runs = [cold_fingerprint() for _ in range(repeats)]
    warm_runs = [_timed(lambda: fingerprint.data_fingerprint(root, category)) for _ in range(repeats)]
    result = fingerprint.data_fingerprint(root, category)

    def first_load(load) -> tuple[float, float]:
        mvtec.clear_memory_cache()
        drop()
        seconds = _timed(load)
        mvtec.clear_memory_cache()
        return seconds

    load3 = first_load(lambda: _load_three_splits(root, category))
    spec = JobSpec(data_root=root, category=category, model=models.MODEL_NAMES[0], dataset=mvtec.dataset_name(root),
                   image_size=IMAGE_SIZE)  # the model is not read by the load
    load1 = first_load(lambda: load_category(spec))
    return dict(
        files=result.n_files, bytes=result.n_bytes, resident=cold_runs[0][1],
        cold=statistics.median(wall for (wall, _), _ in cold_runs),
        cold_cpu=statistics.median(cpu for (_, cpu), _ in cold_runs),
        warm=statistics.median(wall for wall, _ in warm_runs),
        load3=load3[0], load1=load1[0], load1_cpu=load1[1],
    )


def _row(name: str, m: dict) -> str:
    return (
        f"{name:<24} {m['files']:>5} {m['bytes'] / 1e6:>7.1f} {m['resident']:>6} | "
        f"{1000 * m['cold']:>8.1f} {1000 * m['warm']:>7.2f} | {m['load3']:>7.2f} {m['load1']:>7.2f} | "
        f"{100 * m['cold'] / m['load3']:>6.1f}% {100 * m['cold'] / m['load1']:>6.1f}% | "
        f"{100 * m['cold_cpu'] / m['load1_cpu']:>6.1f}%"
    )


HEADER = (
    f"{'category (page cache)':<24} {'files':>5} {'MB':>7} {'cached':>6} | {'fp cold':>8} {'fp warm':>7} | "
    f"{'load x3':>7} {'load_c':>7} | {'fp/x3':>7} {'fp/ld_c':>7} | {'fp/ld_c':>7}\n"
    f"{'':<24} {'':>5} {'':>7} {'':>6} | {'ms':>8} {'ms':>7} | {'s':>7} {'s':>7} | "
    f"{'wall':>7} {'wall':>7} | {'CPU':>7}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", default="../shared/data/dev", help="real-image dev root, skipped if absent")
    parser.add_argument("--synthetic", default="/tmp/bench_fingerprint_mvtec",
                        help="where the synthetic MVTec-sized category is written (reused when present)")
    parser.add_argument("--n-images", type=int, default=300, help="1024-px RGB images of the synthetic category")
    parser.add_argument("--repeats", type=int, default=3, help="fingerprint timings per case (median)")
    args = parser.parse_args()

    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(f"{os.cpu_count()} CPUs; hashing threads {min(filehash.HASH_WORKERS, os.cpu_count() or 1)}; "
          f"loads at {IMAGE_SIZE} px", flush=True)
    cases = []
    dev = Path(args.dev)
    if dev.is_dir():
        cases += [(f"dev/{c} (warm)", dev, c, False) for c in models.list_categories(dev)]
    else:
        print(f"{dev} not found: dev categories skipped")
    synthetic = make_synthetic_category(Path(args.synthetic), args.n_images)
    cases += [(f"{SYNTHETIC_CATEGORY} (warm)", synthetic, SYNTHETIC_CATEGORY, False),
              (f"{SYNTHETIC_CATEGORY} (evicted)", synthetic, SYNTHETIC_CATEGORY, True)]

    print(HEADER, flush=True)
    measured = {}
    for name, root, category, evict in cases:
        measured[name] = measure(root, category, args.repeats, evict)
        print(_row(name, measured[name]), flush=True)

    print("\nwhole MVTec AD, scaled from the synthetic category "
          f"({MVTEC_FILES} files, {MVTEC_BYTES / 1e9:.1f} GB; per byte for cold, per file for warm):")
    for state in ("warm", "evicted"):
        m = measured[f"{SYNTHETIC_CATEGORY} ({state})"]
        cold = m["cold"] * MVTEC_BYTES / m["bytes"]
        warm = m["warm"] * MVTEC_FILES / m["files"]
        print(f"  page cache {state:<7}: fingerprint cold {cold:5.1f} s ({m['bytes'] / m['cold'] / 1e9:.2f} GB/s), "
              f"memo warm {1000 * warm:5.0f} ms; first load (load_category) would be "
              f"{m['load1'] * MVTEC_BYTES / m['bytes']:5.0f} s", flush=True)
    print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
