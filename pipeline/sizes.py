"""The input size of each category: the one given, or one that keeps its images' aspect.

Every image of a category is resized to one H x W before the models see it. By default
(``aspect="fixed"``) that is ``--image-size`` as given: S x S for one number (MVTec AD's
square photos), or H x W. With ``aspect="keep"`` the size follows the category's own images:
the short side is the given S and the long side follows the median aspect ratio of its
images (train and test, read from the file headers), rounded to the step every model of the
grid takes (``models.size_multiple``: 16 for the default models), so a 1250 x 500 strip is
trained at 128 x 320 instead of being squashed to 128 x 128 (bench/README.md, "Non-square
images"). ``aspect="auto"`` decides per category: it keeps the aspect where the median image
is wider or taller than ``AUTO_KEEP`` (1.5:1), where the fixed square would warn, and is
``fixed`` elsewhere, so near-square categories keep the square size (and their rows). Only
the size it resolves to enters a job's key, so an ``auto`` job is the same job, and reuses
the same row and checkpoint, as the ``fixed`` or ``keep`` job it resolved to. An H x W
``--image-size`` is a shape chosen by hand: ``auto`` keeps it as given.

What is odd but legal is said, once per category (``warnings.warn``): a fixed size that
distorts the median image by more than ``SQUASH_WARNING`` (it names the option), and images
whose aspect ratios spread so widely that one H x W stretches some of them by more than
``SPREAD_NOTE``.
"""
from __future__ import annotations

import re
import statistics
import warnings
from dataclasses import dataclass

from models import ImageSize, canonical_size, image_hw, size_label
from models.errors import ConfigError, DatasetError
from models.mvtec import image_dimensions

# the --image-size as given | short side given, long side from the images | keep where the square would distort
ASPECTS = ("fixed", "keep", "auto")
DEFAULT_ASPECT = "fixed"
SQUASH_WARNING = 1.5  # warn when the fixed size distorts the median image's aspect by more than this
AUTO_KEEP = SQUASH_WARNING  # auto keeps the aspect of a category the square size would distort beyond this
SPREAD_NOTE = 1.25  # say so when one H x W stretches some image of the category by more than this


def parse_image_size(text) -> ImageSize:
    """'128' -> 128, '96x240' (height x width) -> (96, 240), '128x128' -> 128; an int or
    (H, W) passes through (the command line's --image-size, the notebook's IMAGE_SIZE)."""
    if not isinstance(text, str):
        return canonical_size(text)
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise ConfigError(f"the image size must be S (S x S px) or HxW (height x width, e.g. 96x240), got {text!r}.")
    height, width = match.groups()
    return canonical_size((int(height), int(width or height)))


def check_aspect(aspect: str, image_size: ImageSize) -> None:
    """ConfigError for an unknown aspect, or ``keep`` with an H x W size (it takes the short side)."""
    if aspect not in ASPECTS:
        raise ConfigError(f"unknown aspect {aspect!r}; valid: {', '.join(ASPECTS)} (keep = the short side is the "
                          "image size, the long side follows the category's images; auto = keep where they are "
                          f"beyond {AUTO_KEEP:g}:1, else fixed).")
    if aspect == "keep" and not isinstance(image_size, int):
        raise ConfigError(f"--aspect keep chooses the long side from the images, so it takes one image size (the "
                          f"short side), got {size_label(image_size)}; pass one number or drop --aspect keep.")


@dataclass(frozen=True)
class Shapes:
    """The shapes of a category's images, as width / height, from their file headers."""

    n_images: int
    median_aspect: float
    min_aspect: float
    max_aspect: float

    @classmethod
    def of(cls, dims: list[tuple[int, int]]) -> Shapes:
        """From (width, height) pairs (``models.mvtec.image_dimensions``); at least one."""
        aspects = sorted(w / h for w, h in dims)
        return cls(n_images=len(dims), median_aspect=statistics.median(aspects), min_aspect=aspects[0],
                   max_aspect=aspects[-1])

    def range_text(self) -> str:
        """'1:1', or '1:3 to 1:1.2' for mixed shapes."""
        lo, hi = ratio_text(self.min_aspect), ratio_text(self.max_aspect)
        return lo if lo == hi else f"{lo} to {hi}"


def ratio_text(aspect: float) -> str:
    """width / height as 'W:H' with the short side 1: 2.5 -> '2.5:1', 0.4 -> '1:2.5'."""
    return f"{aspect:.3g}:1" if aspect >= 1 else f"1:{1 / aspect:.3g}"


def distortion(aspect: float, size: ImageSize) -> float:
    """How much resizing an image of this width / height to ``size`` stretches it (>= 1)."""
    height, width = image_hw(size)
    ratio = aspect / (width / height)
    return max(ratio, 1 / ratio)


def kept_size(median_aspect: float, short_side: int, step: int) -> ImageSize:
    """H x W with the short side ``short_side`` and the long side following ``median_aspect``
    (width / height), rounded to a multiple of ``step`` (at least ``short_side``)."""
    long_side = max(short_side, step * round(short_side * max(median_aspect, 1 / median_aspect) / step))
    return canonical_size((short_side, long_side) if median_aspect >= 1 else (long_side, short_side))


def resolve_aspect(aspect: str, median_aspect: float, image_size: ImageSize) -> str:
    """``fixed`` or ``keep``: ``auto`` keeps the aspect of images wider or taller than
    ``AUTO_KEEP`` : 1 (median width / height) when ``image_size`` is one number, the short side."""
    if aspect != "auto":
        return aspect
    beyond = max(median_aspect, 1 / median_aspect) > AUTO_KEEP
    return "keep" if beyond and isinstance(image_size, int) else "fixed"


def auto_aspect_line(category: str, size: ImageSize) -> str:
    """The grid's line for a category whose aspect ``auto`` kept, from the size it resolved to."""
    height, width = image_hw(size)
    return f"{category}: aspect {ratio_text(width / height)}, kept (--aspect auto): {size_label(size)} px (H x W)."


def category_size(root, category: str, image_size: ImageSize, *, aspect: str = DEFAULT_ASPECT,
                  step: int = 1) -> ImageSize:
    """The size every image of ``category`` is resized to, with the warnings it calls for.

    A category whose file headers cannot all be read keeps ``image_size`` as given (the
    square S x S for ``aspect="keep"``): its jobs then fail alone when the loader names the
    file, as they would without this step, and the rest of the grid runs.
    """
    try:
        dims = image_dimensions(root, category)
    except DatasetError:
        dims = []
    if not dims:
        return image_size
    shapes = Shapes.of(dims)
    aspect = resolve_aspect(aspect, shapes.median_aspect, image_size)
    size = kept_size(shapes.median_aspect, image_size, step) if aspect == "keep" else image_size
    height, width = image_hw(size)
    resized = f"resized to {height} x {width} px (H x W)"
    squash = distortion(shapes.median_aspect, size)
    if aspect == "fixed" and squash > SQUASH_WARNING:
        warnings.warn(
            f"the images of {category!r} are about {ratio_text(shapes.median_aspect)} (width:height, median of "
            f"{shapes.n_images}) but are {resized}, which distorts them {squash:.1f}x; pass --aspect keep (notebook: "
            f"ASPECT = \"keep\") to keep their shape, or --image-size HxW.",
            stacklevel=2,
        )
    worst = max(distortion(shapes.min_aspect, size), distortion(shapes.max_aspect, size))
    if shapes.max_aspect / shapes.min_aspect > SPREAD_NOTE and worst > SPREAD_NOTE:
        warnings.warn(
            f"the images of {category!r} have mixed shapes, from {shapes.range_text()} (width:height, median "
            f"{ratio_text(shapes.median_aspect)}); each is {resized}, which stretches the furthest from it "
            f"{worst:.1f}x; crop them to one shape if that matters.",
            stacklevel=2,
        )
    return size
