"""The built-in demo dataset: procedural textures and objects with exact defect masks, in MVTec layout.

Two textures (``weave``: an over/under woven fabric; ``woodgrain``: turbulent growth rings)
and two objects (``hexnut``: a steel hex nut; ``tablet``: a two-coloured speckled capsule).
Normal images vary as real captures do: lighting gradient, exposure, white balance, sensor
noise, texture phase, period and orientation, object pose (shift, rotation, scale) and
surface detail. Each defect is painted onto the clean render of a normal sample, and its
mask is the exact set of pixels it changed (coverage > 1/2):

- textures: scratch, hole, stain, deformation (a local warp of the weave / grain);
- objects: scratch, missing_piece, colour (a stain), deformation (a dent in the outline).

Everything is vectorised numpy (FFT-filtered noise, distance fields); each image has its
own random stream (``SeedSequence([seed, category, split, defect, index])``), so output is
the same bytes for the same seed whatever the thread scheduling.

``find_or_make_dataset`` chooses the data root for the command line and the notebook alike:
the one the user named, else ./mvtec_anomaly_detection, else this dataset, written on demand.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from models import list_categories
from models.errors import ConfigError, DatasetError
from models.mvtec import MARKER_FILE

from .files import is_plain_name

DEFAULT_DIR = "data/demo"  # where the CLI and the notebook write it when no dataset is found (git-ignored)
DEFAULT_DATA_ROOT = "mvtec_anomaly_detection"  # where MVTec AD is looked for when no data root is named
VERSION = 1  # bump when the generator changes: an existing demo folder is then rewritten
CATEGORIES = {"weave": "texture", "woodgrain": "texture", "hexnut": "object", "tablet": "object"}
DEFECTS = {
    "texture": ("scratch", "hole", "stain", "deformation"),
    "object": ("scratch", "missing_piece", "colour", "deformation"),
}
PNG_OPTIONS = {"compress_level": 1, "optimize": False}  # fixed: same bytes for the same pixels
MAX_MARKER_COUNT = 100_000  # images per kind a marker may list: a crafted count must not build a huge list


# --------------------------------------------------------------------------- primitives


@functools.lru_cache(maxsize=4)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    x.flags.writeable = y.flags.writeable = False  # shared between calls and threads
    return x, y  # (S, S) each, pixel centres


def _smooth_noise(rng, s: int, sigma_px: float) -> np.ndarray:
    """White noise filtered by a Gaussian of std ``sigma_px`` (transfer exp(-2 pi^2 sigma^2 f^2)), unit std, (S, S)."""
    white = rng.standard_normal((s, s), dtype=np.float32)
    f2 = np.fft.fftfreq(s)[:, None] ** 2 + np.fft.rfftfreq(s)[None, :] ** 2
    out = np.fft.irfft2(np.fft.rfft2(white) * np.exp(-2 * (np.pi * sigma_px) ** 2 * f2), s=(s, s))
    return (out / (out.std() + 1e-12)).astype(np.float32)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a shape from its signed distance in px (positive inside)."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0).astype(np.float32)


def _blob(rng, s: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Coverage of an irregular blob: an ellipse whose radius wobbles with angle (harmonics 2-4)."""
    x, y = _grid(s)
    a = rng.uniform(0, np.pi)
    stretch = rng.uniform(0.6, 1.0)
    dx, dy = x - cx, y - cy
    u, v = dx * np.cos(a) + dy * np.sin(a), (-dx * np.sin(a) + dy * np.cos(a)) / stretch
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    wobble = sum(rng.uniform(0, 0.2) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    return _coverage(radius * (1 + wobble) - r)


def _scratch(rng, s: int, cx: float, cy: float, length: float, width: float) -> np.ndarray:
    """Coverage of a thin curved scratch: a quadratic Bezier of ``width`` px through (cx, cy)."""
    x, y = _grid(s)
    a = rng.uniform(0, np.pi)
    d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    c = np.array([cx, cy])
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + n * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0, 1, max(16, int(length)))[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)  # (T, 2)
    # Distance to the curve inside its bounding box only (the rest is far away).
    lo = np.clip(np.floor(pts.min(0) - width - 2), 0, s).astype(int)
    hi = np.clip(np.ceil(pts.max(0) + width + 2), 0, s).astype(int)
    cov = np.zeros((s, s), np.float32)
    if (hi > lo).all():
        bx, by = x[lo[1] : hi[1], lo[0] : hi[0]], y[lo[1] : hi[1], lo[0] : hi[0]]
        dist = np.sqrt(((bx[None] - pts[:, 0, None, None]) ** 2 + (by[None] - pts[:, 1, None, None]) ** 2).min(0))
        cov[lo[1] : hi[1], lo[0] : hi[0]] = _coverage(width / 2 - dist)
    return cov


def _warp(stack: np.ndarray, rng, cx: float, cy: float, radius: float, amp: float):
    """Push the pixels of ``stack`` (S, S, K) by a bump of ``amp`` px that is exactly 0 beyond ``radius``;
    returns (warped, moved by >= 1/2 px)."""
    s = stack.shape[0]
    x, y = _grid(s)
    a = rng.uniform(0, 2 * np.pi)
    g = amp * np.clip(1 - ((x - cx) ** 2 + (y - cy) ** 2) / radius**2, 0, 1) ** 2  # compact, smooth bump
    coords = [y - g * np.sin(a), x - g * np.cos(a)]
    warped = np.stack([ndimage.map_coordinates(stack[..., k], coords, order=1, mode="nearest")
                       for k in range(stack.shape[-1])], axis=-1)
    return warped, g >= 0.5


# --------------------------------------------------------------------------- normal renders


def _weave(rng, s: int):
    """Over/under woven fabric: horizontal and vertical threads alternating on a checkerboard."""
    x, y = _grid(s)
    k = s / 256
    period = rng.uniform(15, 17) * k
    a = np.deg2rad(rng.uniform(-3, 3))
    u = (x * np.cos(a) + y * np.sin(a)) / period + rng.uniform(0, 2)
    v = (-x * np.sin(a) + y * np.cos(a)) / period + rng.uniform(0, 2)
    fu, fv = u % 1, v % 1
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    # Thread cross-section (bright centre) times shading along the thread where it dives under.
    horiz = np.sin(np.pi * fv) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fu))
    vert = np.sin(np.pi * fu) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fv))
    fibre = 0.06 * _smooth_noise(rng, s, 0.8 * k)
    lum = np.where(over, horiz, vert) + fibre
    base = np.array([0.78, 0.70, 0.55]) * rng.uniform(0.97, 1.03, 3)
    shadow = np.array([0.25, 0.22, 0.20])
    return (shadow + (base - shadow) * lum[..., None]).astype(np.float32), None, None


def _woodgrain(rng, s: int):
    """Growth rings: distance to a far-away pith, bent by turbulence, through a two-tone palette."""
    x, y = _grid(s)
    k = s / 256
    cx, cy = rng.uniform(-2.5, -1.5) * s, rng.uniform(0.3, 0.7) * s
    d = np.hypot((x - cx) * rng.uniform(0.9, 1.1), y - cy) + 7 * k * _smooth_noise(rng, s, 24 * k)
    t = d / (rng.uniform(10, 12) * k)
    late = (t % 1) ** 4  # sharp dark latewood at the end of each ring
    streaks = np.interp(d, np.arange(-4 * s, 4 * s, 1.0), rng.standard_normal(8 * s)).astype(np.float32)
    streaks = ndimage.gaussian_filter1d(streaks, 1.0, axis=1) * 0.05  # fine grain following the rings
    lum = np.clip(0.75 * late + streaks + 0.03 * _smooth_noise(rng, s, 3 * k), 0, 1)
    light = np.array([0.80, 0.58, 0.36]) * rng.uniform(0.97, 1.03, 3)
    dark = np.array([0.45, 0.27, 0.14]) * rng.uniform(0.97, 1.03, 3)
    return (light + (dark - light) * lum[..., None]).astype(np.float32), None, None


def _background(rng, s: int, colour) -> np.ndarray:
    k = s / 256
    return (np.array(colour) * (1 + 0.04 * _smooth_noise(rng, s, 30 * k))[..., None]).astype(np.float32)


def _pose(rng, s: int, *, shift: float, tilt_deg: float):
    """Pixel grid and a random pose for an object: centre jittered by up to ``shift`` px (at
    256 px), tilt up to ``tilt_deg`` degrees, size +-3 %. Returns x, y, k (px scale), cx, cy,
    angle (rad), scale."""
    x, y = _grid(s)
    k = s / 256
    cx, cy = s / 2 + rng.uniform(-shift, shift) * k, s / 2 + rng.uniform(-shift, shift) * k
    a = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg))
    scale = rng.uniform(0.97, 1.03)
    return x, y, k, cx, cy, a, scale


def _hexnut(rng, s: int):
    """Steel hex nut seen from above: hexagon minus a round hole, brushed rings and a chamfer."""
    x, y, k, cx, cy, a, scale = _pose(rng, s, shift=6, tilt_deg=8)
    apothem, hole = 78 * k * scale, 36 * k * scale
    dx, dy = x - cx, y - cy
    hexd = np.max([np.abs(dx * np.cos(a + j * np.pi / 3) + dy * np.sin(a + j * np.pi / 3)) for j in range(3)], axis=0)
    r, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    cov = _coverage(apothem - hexd) * _coverage(r - hole)
    brushed = np.interp(r, np.arange(0, s, 0.5), rng.standard_normal(2 * s)).astype(np.float32)
    chamfer = np.clip(1 - (r - hole) / (14 * k), 0, 1)  # bevel around the hole catches the light
    light_dir = rng.uniform(-0.3, 0.3) + np.pi / 4
    lum = 0.58 + 0.05 * brushed + 0.18 * chamfer * np.cos(phi - light_dir) + 0.04 * _smooth_noise(rng, s, 6 * k)
    steel = np.array([0.95, 0.97, 1.0]) * lum[..., None]
    bg = _background(rng, s, [0.16, 0.17, 0.19])
    return (steel * cov[..., None] + bg * (1 - cov[..., None])).astype(np.float32), cov, bg


def _tablet(rng, s: int):
    """A two-coloured capsule (stadium shape), shaded as a cylinder, with red speckles on the white half."""
    x, y, k, cx, cy, a, scale = _pose(rng, s, shift=5, tilt_deg=6)
    half, radius = 62 * k * scale, 34 * k * scale
    dx, dy = x - cx, y - cy
    along, across = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    dist = np.hypot(np.clip(np.abs(along) - half, 0, None), across)  # distance to the axis segment
    cov = _coverage(radius - dist)
    shade = np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, 1))
    lum = (0.55 + 0.45 * shade)[..., None]
    warm = np.array([0.85, 0.32, 0.18]) * rng.uniform(0.97, 1.03, 3)
    cream = np.array([0.93, 0.90, 0.82])
    body = np.where((along < 0)[..., None], warm, cream) * lum
    seam = np.exp(-(along**2) / (2 * (1.2 * k) ** 2))[..., None]
    body = body * (1 - 0.25 * seam)
    n_dots = rng.integers(4, 14)  # speckles: natural variation an autoencoder must learn is normal
    for _ in range(n_dots):
        px, py = rng.uniform(4 * k, half + 0.5 * radius), rng.uniform(-0.7, 0.7) * radius
        # Paint each dot in a small window around its centre only.
        ix = int(cx + px * np.cos(a) - py * np.sin(a))
        iy = int(cy + px * np.sin(a) + py * np.cos(a))
        w = int(4 * k) + 2
        win = np.s_[max(iy - w, 0) : iy + w + 1, max(ix - w, 0) : ix + w + 1]
        dot = _coverage(rng.uniform(1.0, 2.2) * k - np.hypot(along[win] - px, across[win] - py))[..., None]
        body[win] = body[win] * (1 - 0.6 * dot) + np.array([0.55, 0.12, 0.10]) * 0.6 * dot
    bg = _background(rng, s, [0.70, 0.72, 0.74])
    return (body * cov[..., None] + bg * (1 - cov[..., None])).astype(np.float32), cov, bg


RENDERERS = {"weave": _weave, "woodgrain": _woodgrain, "hexnut": _hexnut, "tablet": _tablet}


# --------------------------------------------------------------------------- defects


def _pick(rng, where: np.ndarray, s: int) -> tuple[float, float]:
    """A random pixel (x, y) among ``where`` (or anywhere away from the border if None)."""
    if where is None:
        return tuple(rng.uniform(0.15 * s, 0.85 * s, 2))
    ys, xs = np.nonzero(where)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def _defect(defect: str, rng, img: np.ndarray, cov, bg):
    """(defective image, mask) from the clean render; the mask is every pixel the defect changed."""
    s = img.shape[0]
    k = s / 256
    inside = None if cov is None else cov > 0.95
    edge = None if cov is None else (cov > 0.2) & (cov < 0.8)
    if defect == "scratch":
        c = _pick(rng, inside, s)
        paint = _scratch(rng, s, *c, rng.uniform(40, 110) * k, rng.uniform(1.6, 3.2) * max(k, 1.0))  # >= 1.6 px wide
        if cov is not None:
            paint *= cov
        ink = np.clip(img * 0.3, 0, 1) if rng.random() < 0.5 else np.clip(img * 0.4 + 0.55, 0, 1)
        out = img * (1 - paint[..., None]) + ink * paint[..., None]
        return out, paint > 0.5
    if defect == "hole":
        paint = _blob(rng, s, *_pick(rng, None, s), rng.uniform(8, 22) * k)
        backing = np.array([0.06, 0.05, 0.05]) * (1 + 0.3 * _smooth_noise(rng, s, 2 * k))[..., None]
        return img * (1 - paint[..., None]) + backing * paint[..., None], paint > 0.5
    if defect == "missing_piece":
        paint = _blob(rng, s, *_pick(rng, edge, s), rng.uniform(12, 24) * k) * cov
        return img * (1 - paint[..., None]) + bg * paint[..., None], paint > 0.5
    if defect in ("stain", "colour"):
        paint = _blob(rng, s, *_pick(rng, inside, s), rng.uniform(9, 24) * k)
        if cov is not None:
            paint *= cov
        tint = np.array([[0.95, 0.55, 0.25], [0.35, 0.42, 0.70], [0.55, 0.50, 0.42], [0.40, 0.75, 0.35]])
        tint = tint[rng.integers(len(tint))]
        alpha = rng.uniform(0.55, 0.85) * paint[..., None]
        return img * (1 - alpha) + img * tint * alpha, paint > 0.5
    if defect == "deformation":
        c = _pick(rng, edge, s)
        stack = img if cov is None else np.concatenate([img, cov[..., None]], axis=-1)
        warped, moved = _warp(stack, rng, *c, rng.uniform(14, 24) * k, rng.uniform(5, 9) * k)
        if cov is None:
            return warped, moved
        # Pushing plain background or smooth shading changes nothing visible: the defect is
        # where the outline moved, plus surface detail that visibly moved.
        outline = (cov > 0.5) != (warped[..., 3] > 0.5)
        return warped[..., :3], moved & (outline | (np.abs(warped[..., :3] - img).max(axis=-1) > 0.03))
    raise ValueError(defect)


# --------------------------------------------------------------------------- capture and files


def _capture(rng, img: np.ndarray) -> np.ndarray:
    """What the camera adds to every image: lighting gradient, exposure, white balance, sensor noise."""
    s = img.shape[0]
    x, y = _grid(s)
    gain = rng.uniform(0.93, 1.07) * (1 + rng.uniform(-0.08, 0.08) * (x / s - 0.5)
                                      + rng.uniform(-0.08, 0.08) * (y / s - 0.5))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * 0.012
    out = img * (gain[..., None] * rng.uniform(0.98, 1.02, 3).astype(np.float32)) + noise
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _make_one(job) -> None:
    seed, category, ci, split_i, defect_i, index, image_size, image_path, mask_path, defect = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, ci, split_i, defect_i, index]))
    img, cov, bg = RENDERERS[category](rng, image_size)
    if defect is not None:
        for _ in range(20):  # redraw the rare defect that lands (almost) nowhere
            bad, mask = _defect(defect, rng, img, cov, bg)
            if mask.sum() >= 12 * (image_size / 256) ** 2:
                break
        img = bad
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path, **PNG_OPTIONS)
    Image.fromarray(_capture(rng, img)).save(image_path, **PNG_OPTIONS)


def _marker_names(marker) -> list:
    """The category and defect names a demo marker lists (whatever they are: it is read from the
    folder, so a name may be ``../x`` or an absolute path); [] if the marker does not list them."""
    try:
        return [name for c in marker["categories"] for name in (c, *marker["defects"][c])]
    except (KeyError, TypeError, AttributeError):
        return []


def _demo_files(marker) -> set[str] | None:
    """The files (paths relative to the root, with "/") a run of this generator with ``marker``
    wrote; None if the marker does not say, or names anything but plain names. The only files a
    rewrite of the demo may delete."""
    if not all(is_plain_name(name) for name in _marker_names(marker)):
        return None
    try:
        counts = {k: int(marker["counts"][k]) for k in ("train", "test_good", "per_defect")}
        if max(counts.values()) > MAX_MARKER_COUNT:
            return None
        files = {MARKER_FILE}
        for c in marker["categories"]:
            files |= {f"{c}/train/good/{i:03d}.png" for i in range(counts["train"])}
            files |= {f"{c}/test/good/{i:03d}.png" for i in range(counts["test_good"])}
            for d in marker["defects"][c]:
                files |= {f"{c}/test/{d}/{i:03d}.png" for i in range(counts["per_defect"])}
                files |= {f"{c}/ground_truth/{d}/{i:03d}_mask.png" for i in range(counts["per_defect"])}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    return files


def _foreign_entries(folder: Path, ours: set[str]) -> list[str]:
    """What in ``folder`` the generator did not write (relative paths, folders with a "/"):
    files not in ``ours``, folders holding none of them, and any symbolic link (a rewrite
    must never reach through one into the user's files)."""
    parents = {str(Path(f).parent) for f in ours} | {str(p) for f in ours for p in Path(f).parents}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for d in list(dirnames):
            r = (rel / d).as_posix()
            if os.path.islink(os.path.join(dirpath, d)) or r not in parents:
                foreign.append(r + "/")
                dirnames.remove(d)  # its content is the user's too; one entry says so
        for f in filenames:
            r = (rel / f).as_posix()
            if r not in ours or os.path.islink(os.path.join(dirpath, f)):
                foreign.append(r)
    return sorted(foreign)


def _remove_demo(folder: Path, ours: set[str]) -> None:
    """Delete the generator's files in ``folder``, then the folders left empty; never anything else:
    a file is deleted only if the folder holding it is where ``f`` says, inside ``folder`` (no
    symbolic link on the way, whenever it appeared)."""
    real = os.path.realpath(folder)
    for f in ours:
        path = folder / f
        inside = not Path(f).is_absolute() and ".." not in Path(f).parts  # os.path.join would drop `real`
        if inside and os.path.realpath(path.parent) == os.path.join(real, *Path(f).parent.parts):
            path.unlink(missing_ok=True)  # a link itself is removed, never what it points to
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda w: -len(Path(w[0]).parts)):
        try:
            os.rmdir(dirpath)
        except OSError:  # not empty: something was added meanwhile, and it stays
            pass
    if folder.exists():
        warnings.warn(f"kept {folder}: it holds files the demo generator did not write.", stacklevel=3)


def _write_demo(tmp: Path, marker: dict, *, seed: int, image_size: int, workers: int | None) -> None:
    """Every image and mask of ``marker``'s categories, then the marker itself, into the new folder ``tmp``."""
    counts = marker["counts"]
    jobs = []
    for c in marker["categories"]:
        ci = list(CATEGORIES).index(c)
        split_dirs = [("train", "good", counts["train"]), ("test", "good", counts["test_good"])]
        split_dirs += [("test", d, counts["per_defect"]) for d in DEFECTS[CATEGORIES[c]]]
        for split_i, (split, sub, n) in enumerate(split_dirs):
            folder = tmp / c / split / sub
            folder.mkdir(parents=True)
            defect = None if sub == "good" else sub
            if defect:
                (tmp / c / "ground_truth" / sub).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                mask = tmp / c / "ground_truth" / sub / f"{i:03d}_mask.png" if defect else None
                jobs.append((seed, c, ci, split_i, split_i, i, image_size, folder / f"{i:03d}.png", mask, defect))
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(_make_one, jobs))  # numpy FFTs and zlib release the GIL
    (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _replaceable_demo_files(out: Path, marker: dict) -> set[str] | None:
    """The files of the demo in the existing folder ``out`` that writing ``marker``'s demo there may
    delete; None if ``out`` already holds that exact demo. A DatasetError naming the folder when it
    is not a demo (and not empty), its marker names a path that is not a plain name, or it holds
    files the generator did not write: nothing of the user's is ever deleted."""
    try:
        old = json.loads((out / MARKER_FILE).read_text())
    except (OSError, ValueError):
        old = None
    if old == marker:
        return None
    is_demo = isinstance(old, dict) and old.get("name") == "demo"
    if not is_demo and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(
            f"{out} exists and is not a demo dataset; pass a new or empty folder to write the demo dataset."
        )
    unsafe = [name for name in _marker_names(old) if not is_plain_name(name)] if is_demo else []
    if unsafe:
        raise DatasetError(
            f"refused to rewrite {out}: its {MARKER_FILE} names {unsafe[0]!r} as a demo category or defect, "
            f"which is not a plain folder name (it could reach outside {out}); nothing was deleted: delete that "
            f"{MARKER_FILE} if the folder is yours, or write the demo to another folder."
        )
    ours = (_demo_files(old) if is_demo else None) or set()
    foreign = _foreign_entries(out, ours)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DatasetError(
            f"{out} holds a demo dataset of other settings (seed, size or generator version) and files the demo "
            f"generator did not write ({listed}); "
            f"nothing was deleted: move those out of {out}, or write the demo to another folder."
        )
    return ours


def make_synthetic_dataset(
    out_dir,
    seed: int = 0,
    *,
    image_size: int = 256,  # px, square (MVTec images are 700-1024 px; 256 keeps the demo fast)
    # 60 (MVTec's smallest category has 60): the notebook's default run, two seeds of four models
    # on four categories, then fits in 10 minutes on 2 CPU cores.
    n_train: int = 60,  # defect-free training images per category
    n_test_good: int = 24,  # defect-free test images per category
    n_per_defect: int = 10,  # test images per defect type (4 types -> 40 defective per category)
    categories=None,  # subset of CATEGORIES; None = all four
    workers: int | None = None,  # writer threads; None = CPU count
) -> Path:
    """Write the demo dataset to ``out_dir`` (its root) in MVTec layout and return that path.

    ``out_dir`` must be new, empty, or an earlier demo dataset: if it already holds this
    exact dataset (same DATASET.json), nothing is written; a different demo (another seed or
    generator version) is replaced, but only if the folder holds nothing the generator did
    not write: a folder with anything else (a user's category, notes) is refused with a
    sentence naming it, and nothing is deleted; so is a marker naming anything but plain
    names (it is read from the folder: ``../x`` must never lead a deletion outside it). Files
    are written to a temporary sibling folder renamed at the end, and removed on any error or
    Ctrl-C, so an interrupted run leaves neither a half dataset nor a hidden folder behind. A
    symbolic link ``out_dir`` stays a link: the dataset is written where it points.
    """
    given = Path(out_dir).expanduser()
    out = Path(os.path.realpath(given)) if given.is_symlink() else given
    names = list(CATEGORIES) if categories is None else list(categories)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise DatasetError(f"unknown demo categories {unknown}; valid: {', '.join(CATEGORIES)}.")
    if image_size < 32 or min(n_train, n_test_good, n_per_defect) < 1:
        raise DatasetError("the demo dataset needs image_size >= 32 and at least one image of each kind.")
    marker = {
        "name": "demo", "version": VERSION, "seed": seed, "image_size": image_size,
        "categories": {c: CATEGORIES[c] for c in names},
        "defects": {c: list(DEFECTS[CATEGORIES[c]]) for c in names},
        "counts": {"train": n_train, "test_good": n_test_good, "per_defect": n_per_defect},
    }
    ours: set[str] = set()  # the files of an older demo in ``out``: the only ones a rewrite deletes
    if out.exists():
        ours = _replaceable_demo_files(out, marker)
        if ours is None:
            return given

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_demo(tmp, marker, seed=seed, image_size=image_size, workers=workers)
    except BaseException:  # also Ctrl-C: no hidden half dataset is left beside ``out``
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # an older demo (checked above: only files the generator wrote), or an empty folder
        # Moved aside, not deleted in place: the new dataset takes its name at once, and only
        # the generator's own files are then deleted from the old one.
        old_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old_dir.rmdir()
        os.replace(out, old_dir)
        os.replace(tmp, out)
        _remove_demo(old_dir, ours)
        return given
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return given


# --------------------------------------------------------------------------- the data root


def choose_data_root(named) -> Path | None:
    """The data root to use: ``named`` when the user named one (None or "" = not named); else
    ./mvtec_anomaly_detection if it exists; else None, meaning "use the demo dataset".

    The command line and the notebook share this rule. A root the user named is never swapped
    for the demo, even if it does not exist: a mistyped path must be an error naming it, not a
    run that trains on other data and writes demo rows. An existing default folder is used
    as it is (if it holds no category, that is an error naming it too)."""
    if named is not None and str(named) != "":
        return Path(named).expanduser()
    default = Path(DEFAULT_DATA_ROOT)
    return default if os.path.lexists(default) else None


# What find_or_make_dataset passes on to the demo generator (the notebook's DEMO_OPTIONS): its keyword arguments.
DEMO_OPTION_NAMES = tuple(inspect.signature(make_synthetic_dataset).parameters)[1:]


def find_or_make_dataset(named, demo_dir=DEFAULT_DIR, *, log=print, **demo_options) -> Path:
    """The data root to train on, by one rule for the command line and the notebook
    (``choose_data_root``): ``named`` if the user named one (it must exist and hold a category,
    else a DatasetError naming it); with None or "" (not named), ./mvtec_anomaly_detection if it
    exists (it must hold a category too); otherwise the built-in demo dataset, written to
    ``demo_dir`` (kept if already there) and said in one sentence to ``log``. ``demo_options``
    go to ``make_synthetic_dataset`` (the tests make a tiny demo)."""
    unknown = [k for k in demo_options if k not in DEMO_OPTION_NAMES]
    if unknown:  # make_synthetic_dataset would raise a bare TypeError
        raise ConfigError(f"unknown demo option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(DEMO_OPTIONS); valid: {', '.join(DEMO_OPTION_NAMES)}.")
    root = choose_data_root(named)
    if root is None:
        log(f"No dataset found at ./{DEFAULT_DATA_ROOT}, so the built-in demo dataset is used (written to "
            f"{demo_dir}); its rows are named 'demo' in the results.")
        return Path(make_synthetic_dataset(demo_dir, **demo_options))
    if not os.path.lexists(root):
        raise DatasetError(f"data root {root} does not exist; fix DATA_ROOT (or AD_DATA_ROOT / MVTEC_ROOT), or leave "
                           f"it empty to use ./{DEFAULT_DATA_ROOT}, or the demo dataset when that is absent (on the "
                           "command line: --data-root).")
    list_categories(root)  # a named folder without categories is an error naming it, never a switch to the demo
    return root
