"""The warnings loading a split gives: one sentence per kind of oddity, naming a count and the first file.

Each function returns the sentence, or None when there is nothing to say; ``MVTecAD`` warns
them in a fixed order (docs/faults.md quotes them).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .cache import file_hashes
from .listing import CategoryFiles

INVERTED_MASK_SHARE = 0.5  # a mask marking more of its image as defective is probably saved inverted


def _skipped_note(category: str, folder: Path, skipped: list[Path]) -> str | None:
    """The warning for image files left out because Pillow cannot read their format, per folder."""
    if not skipped:
        return None
    counts = Counter(f.parent.relative_to(folder).as_posix() for f in skipped)
    where = ", ".join(f"{n} in {name}" for name, n in sorted(counts.items()))
    return (f"{len(skipped)} image file(s) of {category} are in a format Pillow cannot read and were skipped "
            f"({where}; first: {min(skipped)}); convert them to PNG to use them.")


def _copies_notes(category: str, listing: CategoryFiles, hashes: dict, workers: int) -> dict:
    """The warnings for test images that are byte-identical copies of a training image (a leak)
    or of an image under the other label (good and defective at once): {"leak": text, "both": text},
    each naming the count and the first pair. ``hashes`` holds the test images' content hashes;
    the training images' come from the same memo the data fingerprint fills."""
    def rel(path: Path) -> str:
        return path.relative_to(listing.folder).as_posix()

    train = {}
    for path, content in file_hashes(listing.train, workers).items():
        train.setdefault(content, path)
    good = {}
    for path, label in zip(listing.test, listing.labels):
        if label == 0:
            good.setdefault(hashes[path], path)
    leaks = [(path, train[hashes[path]]) for path in listing.test if hashes[path] in train]
    both = [(path, good[hashes[path]]) for path, label in zip(listing.test, listing.labels)
            if label == 1 and hashes[path] in good]
    notes = {}
    if leaks:
        (path, copy), n = leaks[0], len(leaks)
        notes["leak"] = (f"{n} test image(s) of {category} are byte-identical to training images (first: "
                         f"{rel(path)} = {rel(copy)}): the model was trained on them, so the test scores are "
                         "better than on new images; remove them from test/ or from train/good.")
    if both:
        (path, copy), n = both[0], len(both)
        notes["both"] = (f"{n} defective test image(s) of {category} are also in test/good (first: {rel(path)} = "
                         f"{rel(copy)}): one image under two labels makes the metrics wrong; keep each image in one "
                         "folder only.")
    return notes


def file_notes(category: str, listing: CategoryFiles, group: str, hashes: dict, workers: int) -> dict:
    """The warnings about the files of a split group ("train": train/good, or "test"), by kind:
    the listing's hints (test: "beside", "unmatched", "folder"), "skipped", and (test) "leak" and "both"."""
    folder = listing.folder
    notes = dict(listing.hints) if group == "test" else {}
    skipped = [f for f in listing.skipped if (f.parent == folder / "train" / "good") == (group == "train")]
    notes["skipped"] = _skipped_note(category, folder, skipped)  # test's: those of test/ and ground_truth/
    if group == "test":
        notes.update(_copies_notes(category, listing, hashes, workers))
    return notes


def missing_mask_note(category: str, missing: list[Path], notes: dict) -> str | None:
    """Defective images without a mask, with the listing's guess of why ("unmatched", "folder")."""
    if not missing:
        return None
    extra = "".join(f"; {h}" for h in (notes.get("unmatched"), notes.get("folder")) if h)
    return (f"{len(missing)} defective test image(s) of {category} have no mask in ground_truth/ "
            f"(first: {missing[0]}); pixel metrics cannot be computed for this category{extra}.")


def empty_mask_note(category: str, n_masks: int, empty: list[Path]) -> str | None:
    """Masks of defective images that mark no pixel at their own size."""
    if not empty:
        return None
    return (f"{len(empty)} of the {n_masks} masks of {category} are empty although their images are defective "
            f"(first: {empty[0]}); mark defect pixels non-zero (255) in them.")


def inverted_mask_note(category: str, n_masks: int, inverted: list[tuple[Path, float]]) -> str | None:
    """Masks marking over ``INVERTED_MASK_SHARE`` of their image. A defect covering most of its
    image is rare (MVTec AD has none); a mask saved black on white is not. Warned, not refused or
    flipped: the user knows which it is."""
    if not inverted:
        return None
    path, share = inverted[0]
    return (f"{len(inverted)} of the {n_masks} masks of {category} mark over "
            f"{INVERTED_MASK_SHARE:.0%} of their image as defective (first: {path}, {share:.0%}), so they are "
            "probably inverted (white = normal): save defects white (255) on black (0).")


def twins_note(category: str, images: list[Path]) -> str | None:
    """Image files with the name of another in their folder (``000.png`` and ``000.jpg``)."""
    seen: dict[tuple, Path] = {}
    twins = []
    for path in images:
        first = seen.setdefault((path.parent, path.stem.casefold()), path)
        if first is not path:
            twins.append((first, path))
    if not twins:
        return None
    first, path = twins[0]
    return (f"{len(twins)} image file(s) of {category} have the same name as another file in their folder "
            f"(first: {path.name} beside {first.name} in {path.parent}); both are used, so a converted copy "
            "counts twice: remove the copies.")


def dark_note(category: str, split: str, images: torch.Tensor, paths: list[str]) -> str | None:
    """Images (uint8 (N, C, H, W)) whose every pixel is <= 1: 8-bit values saved in a 16- or 32-bit file."""
    dark = (images.flatten(1).amax(dim=1) <= 1).nonzero().flatten().tolist() if len(paths) else []
    if not dark:
        return None
    return (f"{len(dark)} of the {len(paths)} {split} images of {category} are almost black (every pixel "
            f"<= 1 of 255; first: {paths[dark[0]]}); 16- and 32-bit integer images are read on the "
            "16-bit scale (65535 = white), so 8-bit values saved in such a file look black: save those as "
            "8-bit PNG files.")
