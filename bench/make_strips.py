"""Build non-square development datasets (MVTec AD layout) by cropping the real grid photographs.

    python bench/make_strips.py [--src ../shared/data/dev/grid] [--out /tmp/aspect_dev] [--seed 0]

Why: the project is adding support for non-square images, and no real non-square dataset is at
hand. Cropping real photographs keeps real texture, lighting and defects (a synthetic image would
not), and cropping the masks identically keeps the ground truth exact. Two categories are written
under --out, each a complete MVTec AD category folder:

  grid_wide        horizontal strips, all 1024 x 408 px (w x h, aspect 2.5:1);
  grid_tall_mixed  vertical crops 320 px wide with a seeded height of 416..960 px each
                   (h:w from 1.3 to 3.0), so one category mixes sizes and aspect ratios.

Recipe for both (a crop is a window of the photo; its mask is the same window of the photo's mask):
  train/good   2 non-overlapping crops of every train photo (disjoint rows for the strips, disjoint
               columns for the tall crops) at seeded random offsets;
  test/<type>  1 crop per defective photo, centred on its mask's bounding box (clipped to the photo),
               so it covers as much of the defect as fits; its mask must be non-empty;
  test/good    2 non-overlapping crops of every test/good photo, plus, from each defective photo, one
               crop touching no mask pixel where one of that size exists (seeded choice among them).

The photos are MVTec AD's (CC BY-NC-SA 4.0): the output goes outside the repository, never into it,
and each category folder gets the source's license.txt. Deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "data" / "dev" / "grid"  # ../shared/data/dev/grid
DEFAULT_OUT = Path("/tmp/aspect_dev")
# The first line of the readme this script writes: an existing --out is replaced only when its
# readme starts with it, so a mistyped --out never deletes someone's folder.
README_MARKER = "Built by bench/make_strips.py"
MANIFEST_NAME = "crops.csv"  # where every output file came from (source photo and window)


@dataclass(frozen=True)
class Recipe:
    """The crop sizes of one output category and the axis along which a photo's 2 crops must not overlap."""

    category: str
    width: int
    min_height: int
    max_height: int  # inclusive; equal to min_height for a fixed size
    disjoint_axis: str  # "y": the 2 crops of a photo have disjoint rows; "x": disjoint columns

    def draw_height(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.min_height, self.max_height + 1))


RECIPES = (
    Recipe("grid_wide", width=1024, min_height=408, max_height=408, disjoint_axis="y"),
    # h:w from 1.3 to 3.0 at 320 px wide: 416 .. 960 px high.
    Recipe("grid_tall_mixed", width=320, min_height=416, max_height=960, disjoint_axis="x"),
)


@dataclass(frozen=True)
class Window:
    """A crop window of a photo, in px: left and top edges, width and height."""

    left: int
    top: int
    width: int
    height: int

    def pil_box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)

    def of(self, array: np.ndarray) -> np.ndarray:
        return array[self.top:self.top + self.height, self.left:self.left + self.width]


@dataclass(frozen=True)
class DefectivePhoto:
    defect_type: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class SourcePhotos:
    train: list[Path]
    test_good: list[Path]
    defective: list[DefectivePhoto]


@dataclass(frozen=True)
class Crop:
    """One output file to write: which photo, which window, where it goes (and its mask, if defective)."""

    folder: str  # "train/good", "test/good" or "test/<defect type>"
    source: Path
    window: Window
    kind: str  # what made it: train pair, test-good pair, defect, defect-free crop of a defective photo
    mask: np.ndarray | None = None  # the window of the photo's mask, for defective crops only


def fail(message: str) -> None:
    """One sentence on stderr and exit status 2 (a usage error, like argparse's)."""
    print(f"make_strips.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC,
                        help=f"MVTec AD 'grid' category folder to crop (default {DEFAULT_SRC})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"data root to write, outside the repository (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    return parser.parse_args(argv)


def png_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))


def find_source_photos(src: Path) -> SourcePhotos:
    """The photos of an MVTec category folder; a missing or incomplete one is refused in one sentence."""
    train = png_files(src / "train" / "good")
    if not src.is_dir() or not train or not (src / "test").is_dir():
        fail(f"no MVTec AD category folder at {src} (expected train/good/*.png, test/ and ground_truth/ in it); "
             "pass --src with the path of the grid category of MVTec AD (e.g. /work/shared/data/dev/grid).")
    defect_dirs = sorted(p for p in (src / "test").iterdir() if p.is_dir() and p.name != "good")
    defective = []
    for folder in defect_dirs:
        for image in png_files(folder):
            mask = src / "ground_truth" / folder.name / f"{image.stem}_mask.png"
            if not mask.is_file():
                fail(f"the defective photo {image} has no mask at {mask}; a defect crop needs its mask, "
                     "so restore the ground_truth folder of --src.")
            defective.append(DefectivePhoto(folder.name, image, mask))
    return SourcePhotos(train, png_files(src / "test" / "good"), defective)


def check_out(out: Path, src: Path) -> None:
    """Refuse an --out in the repository, overlapping --src, or an existing folder this script did not write."""
    out, src = out.resolve(), src.resolve()
    if out.is_relative_to(REPO_ROOT):
        fail(f"--out {out} is inside the repository {REPO_ROOT}, but these MVTec AD crops must never be "
             "committed; pass a folder outside it, e.g. the default /tmp/aspect_dev.")
    if out.is_relative_to(src) or src.is_relative_to(out):
        fail(f"--out {out} and --src {src} overlap; write the crops to a separate folder.")
    if out.exists() and not was_written_here(out):
        fail(f"--out {out} exists and was not written by this script (no {out / 'readme.txt'} starting with "
             f"'{README_MARKER}'), so it is left alone; remove it yourself or pass another --out.")


def was_written_here(out: Path) -> bool:
    readme = out / "readme.txt"
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True  # an empty folder holds nothing to lose
    return readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER)


def load_mask(path: Path) -> np.ndarray:
    """Boolean defect map of a mask file (any non-zero pixel is defect)."""
    return np.asarray(Image.open(path).convert("L")) > 0


def photo_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    with Image.open(path) as image:
        return image.height, image.width


def disjoint_pair(rng: np.random.Generator, recipe: Recipe, shape: tuple[int, int]) -> tuple[Window, Window]:
    """Two windows at uniform random offsets whose extents along recipe.disjoint_axis do not overlap.

    Rejection sampling: uniform over the valid pairs, and at these sizes a pair is valid often enough
    (about 1 draw in 9 for the strips) that the loop is instant.
    """
    photo_h, photo_w = shape
    heights = [recipe.draw_height(rng), recipe.draw_height(rng)]
    along_y = recipe.disjoint_axis == "y"
    span = photo_h if along_y else photo_w
    lengths = heights if along_y else [recipe.width, recipe.width]
    if sum(lengths) > span:
        raise ValueError(f"two {recipe.category} crops of {lengths} px cannot be disjoint in {span} px")
    while True:
        windows = [
            Window(int(rng.integers(0, photo_w - recipe.width + 1)), int(rng.integers(0, photo_h - h + 1)),
                   recipe.width, h)
            for h in heights
        ]
        starts = [w.top if along_y else w.left for w in windows]
        if starts[0] + lengths[0] <= starts[1] or starts[1] + lengths[1] <= starts[0]:
            return windows[0], windows[1]


def centred_start(centre: float, length: int, span: int) -> int:
    """Start of a window of `length` centred on `centre`, shifted to lie within [0, span)."""
    return int(np.clip(round(centre - length / 2), 0, span - length))


def defect_window(rng: np.random.Generator, recipe: Recipe, defect: np.ndarray) -> Window:
    """A window centred on the bounding box of the defect (clipped to the photo), containing defect pixels.

    A window smaller than the box covers its middle. Should that middle hold no defect pixel (a thin
    bent line, a ring), the window slides, still containing the box centre, to where it holds the most
    defect pixels; only if no such window touches the defect is it centred on the nearest defect pixel.
    """
    height = recipe.draw_height(rng)
    rows, cols = np.nonzero(defect)
    centre_y, centre_x = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    span_h, span_w = defect.shape

    def centred_on(y: float, x: float) -> Window:
        return Window(centred_start(x, recipe.width, span_w), centred_start(y, height, span_h), recipe.width, height)

    window = centred_on(centre_y, centre_x)
    if window.of(defect).any():
        return window
    counts = defect_counts(defect, recipe.width, height)  # [top, left]
    row, col = int(centre_y), int(centre_x)
    tops = slice(max(0, row - height + 1), min(row, span_h - height) + 1)  # windows holding the box centre
    lefts = slice(max(0, col - recipe.width + 1), min(col, span_w - recipe.width) + 1)
    around_centre = counts[tops, lefts]
    if around_centre.max() > 0:
        top, left = np.unravel_index(np.argmax(around_centre), around_centre.shape)
        return Window(int(lefts.start + left), int(tops.start + top), recipe.width, height)
    nearest = np.argmin((rows - centre_y) ** 2 + (cols - centre_x) ** 2)
    return centred_on(rows[nearest], cols[nearest])


def defect_counts(defect: np.ndarray, width: int, height: int) -> np.ndarray:
    """Defect pixels in every width x height window, indexed [top, left].

    A summed-area table gives the counts of all windows at once.
    """
    table = np.pad(defect.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return table[height:, width:] - table[:-height, width:] - table[height:, :-width] + table[:-height, :-width]


def defect_free_windows(defect: np.ndarray, width: int, height: int) -> np.ndarray:
    """(top, left) of every width x height window holding no defect pixel, as a (K, 2) array."""
    return np.argwhere(defect_counts(defect, width, height) == 0)


def defect_free_window(rng: np.random.Generator, recipe: Recipe, defect: np.ndarray) -> Window | None:
    """A seeded choice among the windows (of a freshly drawn height) that touch no defect pixel; None if none."""
    height = recipe.draw_height(rng)
    candidates = defect_free_windows(defect, recipe.width, height)
    if len(candidates) == 0:
        return None
    top, left = candidates[rng.integers(len(candidates))]
    return Window(int(left), int(top), recipe.width, height)


def plan_crops(recipe: Recipe, photos: SourcePhotos, seed: int) -> tuple[list[Crop], list[Path]]:
    """Every crop of one category, in output order, and the defective photos with no defect-free crop.

    Each category has its own random stream (seed, category index), so changing one recipe never
    moves the crops of the other.
    """
    rng = np.random.default_rng([seed, RECIPES.index(recipe)])
    crops: list[Crop] = []
    for path in photos.train:
        crops += [Crop("train/good", path, w, "train pair") for w in disjoint_pair(rng, recipe, photo_shape(path))]
    for path in photos.test_good:
        crops += [Crop("test/good", path, w, "test good pair") for w in disjoint_pair(rng, recipe, photo_shape(path))]
    defect_free, without_clean_crop = [], []
    for photo in photos.defective:
        defect = load_mask(photo.mask)
        window = defect_window(rng, recipe, defect)
        mask = window.of(defect)
        assert mask.any(), f"the {recipe.category} crop {window} of {photo.image} holds no defect pixel"
        crops.append(Crop(f"test/{photo.defect_type}", photo.image, window, "defect", mask))
        clean = defect_free_window(rng, recipe, defect)
        if clean is None:
            without_clean_crop.append(photo.image)
            continue
        assert not clean.of(defect).any(), f"the defect-free crop {clean} of {photo.image} touches the defect"
        defect_free.append(Crop("test/good", photo.image, clean, f"defect-free crop of {photo.defect_type}"))
    return crops + defect_free, without_clean_crop


def write_category(recipe: Recipe, crops: list[Crop], src: Path, root: Path) -> list[dict]:
    """Write the crops as 000.png, 001.png, ... per folder (masks as <stem>_mask.png); the manifest rows."""
    category = root / recipe.category
    numbered: dict[str, int] = {}
    rows = []
    for crop in crops:
        number = numbered.get(crop.folder, 0)
        numbered[crop.folder] = number + 1
        stem = f"{number:03d}"
        image_file = category / crop.folder / f"{stem}.png"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(crop.source) as photo:
            photo.crop(crop.window.pil_box()).save(image_file)  # PIL keeps the photo's mode ('L')
        mask_file = None
        if crop.mask is not None:
            defect_type = crop.folder.removeprefix("test/")
            mask_file = category / "ground_truth" / defect_type / f"{stem}_mask.png"
            mask_file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop.mask.astype(np.uint8) * 255).save(mask_file)
        w = crop.window
        rows.append({
            "category": recipe.category, "file": image_file.relative_to(root).as_posix(),
            "mask": mask_file.relative_to(root).as_posix() if mask_file else "",
            "source": crop.source.relative_to(src).as_posix(), "kind": crop.kind,
            "left": w.left, "top": w.top, "width": w.width, "height": w.height,
        })
    shutil.copyfile(src / "license.txt", category / "license.txt")
    return rows


def readme_text(src: Path, seed: int) -> str:
    sizes = "\n".join(
        f"  {r.category}: {r.width} px wide, "
        + (f"{r.min_height} px high" if r.min_height == r.max_height else f"{r.min_height}..{r.max_height} px high "
           "(drawn per crop, uniform)")
        + f"; a photo's 2 crops have disjoint {'rows' if r.disjoint_axis == 'y' else 'columns'}"
        for r in RECIPES
    )
    return f"""{README_MARKER} (python bench/make_strips.py --src {src} --out <this folder> --seed {seed}).

Non-square development data in MVTec AD layout, cropped from the real MVTec AD 'grid' photographs in
{src} (1024 x 1024 px, grayscale). Seed: {seed} (same seed, same files).

Crop sizes:
{sizes}

Recipe per category (a mask is the same window of the photo's mask, saved 0/255):
  train/good   2 non-overlapping crops of each train photo at seeded random offsets;
  test/<type>  1 crop per defective photo centred on the bounding box of its mask (clipped to the photo),
               mask non-empty;
  test/good    2 non-overlapping crops of each test/good photo, then one crop per defective photo that
               touches no mask pixel, where one of the drawn size exists (seeded choice among them).
{MANIFEST_NAME} names the source photo and window (left, top, width, height) of every file.

The photos are MVTec AD's: Copyright 2019 MVTec Software GmbH, CC BY-NC-SA 4.0 (license.txt in each
category folder). Do not commit these files to a repository.
"""


def aspect_summary(rows: list[dict]) -> str:
    aspects = np.array([r["width"] / r["height"] for r in rows])
    return f"aspect w/h min {aspects.min():.3f}, median {np.median(aspects):.3f}, max {aspects.max():.3f}"


def print_summary(out: Path, rows: list[dict], without_clean: dict[str, list[Path]], src: Path) -> None:
    print(f"wrote {out}")
    for recipe in RECIPES:
        mine = [r for r in rows if r["category"] == recipe.category]
        counts: dict[str, int] = {}
        for r in mine:
            folder = r["file"].split("/", 1)[1].rsplit("/", 1)[0]
            counts[folder] = counts.get(folder, 0) + 1
        print(f"  {recipe.category}: {len(mine)} images; {aspect_summary(mine)}")
        from_defective = sum(r["kind"].startswith("defect-free") for r in mine)
        for folder in sorted(counts, key=lambda f: (f != "train/good", f != "test/good", f)):
            is_good = folder == "test/good"
            note = f"  ({from_defective} of them defect-free crops of defective photos)" if is_good else ""
            print(f"    {folder:28s} {counts[folder]:3d}{note}")
        skipped = without_clean[recipe.category]
        if skipped:
            names = ", ".join(p.relative_to(src).as_posix() for p in skipped)
            print(f"    no defect-free crop of that size exists in {len(skipped)} defective photo(s): {names}")


def main(argv=None) -> None:
    args = parse_args(argv)
    src, out = args.src.expanduser().resolve(), args.out.expanduser().resolve()
    photos = find_source_photos(src)
    check_out(out, src)

    # Build beside the target and swap it in at the end: an interrupted run never leaves a half
    # dataset under --out (nor one that a rerun would refuse to replace).
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        rows, without_clean = [], {}
        for recipe in RECIPES:
            crops, without_clean[recipe.category] = plan_crops(recipe, photos, args.seed)
            rows += write_category(recipe, crops, src, staging)
        with open(staging / MANIFEST_NAME, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (staging / "readme.txt").write_text(readme_text(src, args.seed))
        if out.exists():
            shutil.rmtree(out)  # check_out made sure this script wrote it (or that it is empty)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_summary(out, rows, without_clean, src)


if __name__ == "__main__":
    main()
