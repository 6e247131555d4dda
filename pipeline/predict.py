"""``predict``: a trained job on new images: their scores, verdicts and heatmaps, in one output folder.

For the trained job of a results row (``pipeline.trained``) and the images given
(``image_files.find_images``: files, folders, glob patterns; sorted), each image is decoded
exactly as the training images were (``models.mvtec.decode``: EXIF orientation, mode, 16-bit and
alpha rules, the antialiased resize to the row's input size and channels), scored in batches
under ``inference_mode`` by the row's scoring rule (``evaluate.score_split``, the evaluation's
own function, in the row's evaluation batch size, so a test image gets the row's score exactly),
and called defective iff its score is above the row's threshold (as the row's F1 counts). The
output folder gets ``predictions.csv`` (``COLUMNS``) and ``heatmaps/<name>.png``
(``pipeline.heatmaps``, named by ``image_files.heatmap_names``); one line sums the run up. The
output folder is checked first (``image_files``): the user's images are never written over or
beside. An image that cannot be read is named and counted, the others are predicted. Odd but
legal inputs are said once: images resized to another aspect than their own, colour images
given to a grayscale model.
"""
from __future__ import annotations

import csv
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from models import ImageSize, image_hw
from models.errors import ConfigError, DatasetError
from models.mvtec import HUGE_PIXELS
from models.mvtec.decode import decode_image, resize_array

from . import heatmaps
from .evaluate import score_split
from .files import atomic_write, make_folder
from .image_files import check_no_overwrite, check_output_folder, find_images, heatmap_names
from .sizes import SQUASH_WARNING, distortion, ratio_text
from .trained import TrainedJob, add_job_arguments, trained_from_args

COLUMNS = ("path", "score", "threshold", "verdict", "map_max", "heatmap", "error")
CSV_NAME = "predictions.csv"
HEATMAP_FOLDER = "heatmaps"
BATCHES_PER_CHUNK = 4  # images decoded, scored and drawn together: bounded memory, batches as the evaluation's
MIN_CHUNK = 32
MAX_NAMED_FAILURES = 5


# ------------------------------------------------------------------ decoding


@dataclass
class Decoded:
    """One image as the model takes it, and as it is drawn."""

    pixels: np.ndarray  # uint8 (C, H, W) at the model's input size, exactly as decode_image gives it
    image: np.ndarray | None  # uint8 (3, h, w) at the image's own size (the heatmap's background)
    original_size: tuple[int, int]  # (width, height), upright


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, upright; None if it cannot be read there."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF quarter turns swap the sides
    except Exception:  # noqa: BLE001 - decode_image says what is wrong with the file
        return None
    return (height, width) if turned else (width, height)


def decode_for_prediction(path: Path, image_size: ImageSize, in_channels: int, *, with_image: bool = True) -> Decoded:
    """``path`` decoded once at its own size (the heatmap's background) and resized from there to the
    model's input as ``decode_image`` resizes. An image whose header size is not its decoded size
    (odd EXIF), or a huge one (``decode_image`` reduces it while decoding), is decoded at the model's
    size on its own, and at its own size only ``with_image``."""
    size = _header_size(path)
    if size is not None and size[0] * size[1] <= HUGE_PIXELS:
        full = decode_image(path, (size[1], size[0]), 3)
        if tuple(full.original_size) == size:
            pixels = resize_array(full.array.transpose(1, 2, 0), image_size, in_channels)  # decode_image's own resize
            return Decoded(pixels, full.array, size)
    model_input = decode_image(path, image_size, in_channels)
    width, height = model_input.original_size
    image = decode_image(path, (height, width), 3).array if with_image else None
    return Decoded(model_input.array, image, (width, height))


def _decode_or_error(path: Path, job: TrainedJob, with_image: bool) -> Decoded | str:
    """The decoded image, or the one sentence that says why it cannot be read (DatasetError)."""
    try:
        return decode_for_prediction(path, job.image_size, job.in_channels, with_image=with_image)
    except DatasetError as e:
        return str(e)


# ------------------------------------------------------------------ the run


@dataclass
class Prediction:
    """One image's line of predictions.csv."""

    path: Path
    score: float = math.nan
    verdict: str = "failed"  # "defective" (score > threshold), "good", "" (no threshold), "failed" (unreadable)
    map_max: float = math.nan  # the map's maximum at the model's input size
    heatmap: Path | None = None  # relative to the output folder
    error: str = ""  # why it could not be read


@dataclass
class Timings:
    """Wall seconds of each step of a run, summed over its chunks."""

    decode: float = 0.0
    model: float = 0.0
    heatmaps: float = 0.0
    total: float = 0.0


@dataclass
class Oddities:
    """Legal inputs that are not what the model was trained on, said once per run: how many, the first."""

    squashed: list[tuple[Path, float, float]] = field(default_factory=list)  # (path, aspect, distortion)
    colour_to_gray: list[Path] = field(default_factory=list)

    def look_at(self, path: Path, decoded: Decoded, image_size: ImageSize, in_channels: int) -> None:
        width, height = decoded.original_size
        stretch = distortion(width / height, image_size)
        if stretch > SQUASH_WARNING:
            self.squashed.append((path, width / height, stretch))
        image = decoded.image  # (3, h, w): a gray file's channels are equal
        if in_channels == 1 and image is not None and not (image == image[:1]).all():
            self.colour_to_gray.append(path)

    def notes(self, n_images: int, image_size: ImageSize) -> list[str]:
        height, width = image_hw(image_size)
        out = []
        if self.squashed:
            path, aspect, stretch = max(self.squashed, key=lambda s: s[2])
            were = "were" if len(self.squashed) > 1 else "was"
            out.append(f"{len(self.squashed)} of {n_images} images {were} resized to {height} x {width} px (H x W), "
                       f"the model's input, away from their own aspect (the most: {path}, {ratio_text(aspect)} "
                       f"width:height, {stretch:.1f}x), as training resized its images; crop them to about "
                       f"{ratio_text(width / height)} if that distorts the product.")
        if self.colour_to_gray:
            out.append(f"{len(self.colour_to_gray)} colour images (first: {self.colour_to_gray[0]}) were read in "
                       "gray, as the model (1 channel) was trained: colour alone cannot make them anomalous.")
        return out


@dataclass
class PredictionRun:
    """What ``predict_images`` did: one ``Prediction`` per image, in order, and where it wrote them."""

    job: TrainedJob
    out: Path
    predictions: list[Prediction]
    seconds: Timings

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if p.verdict == "failed"]

    @property
    def defective(self) -> list[Prediction]:
        return [p for p in self.predictions if p.verdict == "defective"]

    def summary(self) -> str:
        """One line: N images, K defective at threshold T, F failed, seconds, where."""
        n, total = len(self.predictions), self.seconds.total
        rate = f", {(n - len(self.failed)) / total:.1f} images/s" if total > 0 else ""
        return (f"{n} images: {len(self.defective)} defective at threshold {self.job.threshold:.6g} "
                f"({self.job.describe()}), {len(self.failed)} failed; {total:.3g} s{rate}; "
                f"{self.out / CSV_NAME}")


def verdict(score: float, threshold: float) -> str:
    """'defective' iff the score is above the threshold (the row's F1 rule), '' without a threshold."""
    if not math.isfinite(threshold):
        return ""
    return "defective" if score > threshold else "good"


def chunk_size(batch_size: int) -> int:
    """Images per chunk: whole batches of the row's evaluation (so that they are batched as it was)."""
    return batch_size * max(BATCHES_PER_CHUNK, -(-MIN_CHUNK // batch_size))


def predict_images(job: TrainedJob, images: list[Path], out, *, write_heatmaps: bool = True,
                   batch_size: int | None = None, workers: int | None = None, progress: bool = True) -> PredictionRun:
    """Score ``images`` (``find_images``) with ``job`` and write ``out``/predictions.csv and, with
    ``write_heatmaps``, ``out``/heatmaps/; decoding and drawing run on ``workers`` threads (default
    min(8, CPUs)), the model on torch's. ``out`` must have passed ``check_output_folder``."""
    start = time.perf_counter()
    out = Path(out)
    names = [Path(HEATMAP_FOLDER) / n for n in heatmap_names(images)] if write_heatmaps else [None] * len(images)
    check_no_overwrite(images, [out / CSV_NAME, *(out / n for n in names if n is not None)])
    make_folder(out, what="output folder", fix="pass another --out", error=ConfigError)
    run = PredictionRun(job=job, out=out, predictions=[Prediction(path=p, heatmap=n) for p, n in zip(images, names)],
                        seconds=Timings())
    odd = Oddities()
    batch_size = batch_size or job.batch_size
    step = chunk_size(batch_size)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(images), unit="image", desc=f"predict {job.name}",
                 disable=not progress or len(images) <= step) as bar:
        for first in range(0, len(images), step):
            chunk = run.predictions[first:first + step]
            _predict_chunk(run, chunk, pool, odd, batch_size=batch_size, write_heatmaps=write_heatmaps)
            bar.update(len(chunk))
    write_predictions(out / CSV_NAME, run.predictions, job.threshold)
    for note in odd.notes(len(images), job.image_size) + _failure_notes(run.failed):
        warnings.warn(note, stacklevel=2)
    run.seconds.total = time.perf_counter() - start
    return run


def predict_inputs(job: TrainedJob, inputs, out, *, allow_inside: bool = False, **kw) -> PredictionRun:
    """``predict_images`` on the images ``inputs`` name (files, folders, patterns), after the output
    folder's checks: what ``python -m pipeline predict`` does, from Python (the notebook)."""
    resolved = check_output_folder(Path(out), inputs, allow_inside=allow_inside)
    return predict_images(job, find_images(inputs, skip=resolved), resolved, **kw)


def _predict_chunk(run: PredictionRun, chunk: list[Prediction], pool: ThreadPoolExecutor, odd: Oddities, *,
                   batch_size: int, write_heatmaps: bool) -> None:
    """Decode, score and draw one chunk of ``run``'s images, filling in their ``Prediction``s."""
    job, seconds = run.job, run.seconds
    t0 = time.perf_counter()
    decoded = list(pool.map(lambda p: _decode_or_error(p.path, job, write_heatmaps), chunk))
    ok = []
    for p, d in zip(chunk, decoded):
        if isinstance(d, str):
            p.error, p.heatmap = d, None
        else:
            ok.append((p, d))
            odd.look_at(p.path, d, job.image_size, job.in_channels)
    t1 = time.perf_counter()
    maps, scores = _score(job, [d.pixels for _, d in ok], batch_size)
    t2 = time.perf_counter()
    for (p, _), amap, score in zip(ok, maps, scores.tolist()):
        p.score, p.map_max, p.verdict = score, float(amap.max()), verdict(score, job.threshold)
    if write_heatmaps:
        scale = heatmaps.colour_scale(job.threshold)
        list(pool.map(lambda k: heatmaps.write_heatmap(run.out / ok[k][0].heatmap, ok[k][1].image, maps[k],
                                                       threshold=job.threshold, scale=scale), range(len(ok))))
    seconds.decode += t1 - t0
    seconds.model += t2 - t1
    seconds.heatmaps += time.perf_counter() - t2


def _score(job: TrainedJob, pixels: list[np.ndarray], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, H, W) and scores (N,) of decoded images, by the evaluation's own function."""
    if not pixels:
        return torch.empty(0), torch.empty(0)
    images = SimpleNamespace(images=torch.from_numpy(np.stack(pixels)))  # (N, C, H, W) uint8: what score_split reads
    return score_split(job.model, images, score=job.eval_config.score, batch_size=batch_size, amp=job.amp)


def _failure_notes(failed: list[Prediction]) -> list[str]:
    """One note per image that could not be read (its sentence), the first few, then how many more."""
    notes = [f"left out: {p.error}" for p in failed[:MAX_NAMED_FAILURES]]
    if len(failed) > MAX_NAMED_FAILURES:
        notes.append(f"{len(failed) - MAX_NAMED_FAILURES} more images could not be read; predictions.csv says why "
                     "(column error).")
    return notes


def write_predictions(path: Path, predictions: list[Prediction], threshold: float) -> None:
    """predictions.csv (``COLUMNS``), written atomically; floats exact (repr), NaN as an empty cell."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else repr(value)
        return "" if value is None else str(value)

    with atomic_write(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for p in predictions:
            writer.writerow([cell(v) for v in (str(p.path), p.score, threshold, p.verdict, p.map_max,
                                               p.heatmap.as_posix() if p.heatmap else None, p.error)])


# ------------------------------------------------------------------ the notebook and the command line


def show_predictions(out, n: int = 6, *, columns: int = 3):
    """A figure of ``n`` heatmaps of a run's output folder ``out``, from the lowest score to the
    highest (evenly spread over the run's images), each titled with its name, score and verdict."""
    from matplotlib.figure import Figure  # slow to import (~0.3 s) and only the notebook draws

    with open(Path(out) / CSV_NAME, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["heatmap"]]
    if not rows:
        raise DatasetError(f"{str(Path(out) / CSV_NAME)!r} lists no heatmaps; run predict with heatmaps first.")
    rows.sort(key=lambda r: float(r["score"]))
    shown = [rows[i] for i in sorted({round(k * (len(rows) - 1) / max(1, n - 1)) for k in range(min(n, len(rows)))})]
    columns = min(columns, len(shown))
    lines = -(-len(shown) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.4 * lines), layout="constrained")
    for k, row in enumerate(shown):
        ax = fig.add_subplot(lines, columns, k + 1)
        with Image.open(Path(out) / row["heatmap"]) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(f"{Path(row['path']).name}\n{float(row['score']):.4g} {row['verdict']}".rstrip(), fontsize=9)
        ax.axis("off")
    return fig


def add_parser(sub) -> None:
    """The ``predict`` command (``python -m pipeline predict``)."""
    p = sub.add_parser(
        "predict", help="score new images with a trained job: verdicts, heatmaps, predictions.csv",
        description="Score new images with the trained model of a results row (or a checkpoint): each image's "
                    "score, its verdict against the row's threshold, and a heatmap PNG, in --out DIR "
                    "(predictions.csv and heatmaps/). Images are read exactly as the training images were.",
        epilog="Exit status: 0 every image predicted, 1 some images could not be read (the others are predicted), "
               "2 bad input (one sentence on stderr).")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, folders of images (searched recursively) or glob patterns")
    add_job_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (predictions.csv, heatmaps/); never an input folder, unless --allow-inside")
    p.add_argument("--allow-inside", action="store_true",
                   help="allow --out inside an input folder (files already under it are not taken as inputs)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="inference batch (default: the row's evaluation batch, which gives its scores exactly)")
    p.add_argument("--no-heatmaps", action="store_true", help="scores and verdicts only")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="(default cpu)")
    p.add_argument("--num-threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch, and for decoding and drawing (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a whole number >= 1, got {args.batch_size}.")
    if args.num_threads < 0:
        raise ConfigError(f"--num-threads must be a whole number >= 0, got {args.num_threads}.")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    out = check_output_folder(Path(args.out), args.images, allow_inside=args.allow_inside)
    images = find_images(args.images, skip=out)  # before the model loads: a wrong path is said at once
    job = trained_from_args(args, device=args.device)
    run = predict_images(job, images, out, write_heatmaps=not args.no_heatmaps, batch_size=args.batch_size,
                         workers=args.num_threads or None, progress=not args.no_progress)
    print(run.summary())
    return 1 if run.failed else 0
