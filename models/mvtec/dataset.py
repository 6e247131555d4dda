"""``MVTecAD``: one split of one category, decoded once into uint8 tensors.

Every file is decoded and resized once at construction, in a thread pool (PIL releases the
GIL while it inflates and resizes), and kept as uint8 tensors: re-decoding 1024-px PNGs every
epoch costs more than the model. The files come from ``listing.list_files``, the pixels from
``decode``, through the caches of ``cache``; what is odd about the files is warned
(``notes``) or refused.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base import DEFAULT_IMAGE_SIZE, ImageSize, canonical_size, image_hw, size_label
from ..errors import ConfigError, DatasetError
from . import cache, decode, notes
from .listing import CategoryFiles, list_files

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # of train/good held out as val (threshold, validation loss)


@dataclass
class SplitFiles:
    """The files a split is drawn from: train/good for train and val (``group`` "train"), test/ for test."""

    group: str  # "train" or "test"
    images: list[Path]
    labels: list[int]  # 0 good, 1 defective
    defects: list[str]  # "good" or the defect type
    masks: list  # the mask file of each image, or None


@dataclass
class MaskFindings:
    """What reading the masks of the kept images found, for the warnings."""

    missing: list[Path] = field(default_factory=list)  # defective images without a mask
    empty: list[Path] = field(default_factory=list)  # masks with no defect pixel at the model's size
    inverted: list[tuple[Path, float]] = field(default_factory=list)  # masks marking most of their image, and how much


def _checked_size(split: str, image_size: ImageSize, in_channels: int, val_fraction: float) -> ImageSize:
    """``image_size`` in its canonical spelling; ConfigError for a bad argument."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    image_size = canonical_size(image_size)
    if min(image_hw(image_size)) < 1:
        raise ConfigError(f"image_size must be positive, got {size_label(image_size)}.")
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3, got {in_channels!r}.")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    return image_size


def _test_files(listing: CategoryFiles) -> SplitFiles:
    """test/'s images, labels, defect types and masks; DatasetError if it cannot be loaded as it is."""
    images, masks = listing.test, listing.masks
    listing.raise_refused(images + [m for m in masks if m is not None])
    if listing.test_problem:
        raise DatasetError(listing.test_problem)
    if not images:
        raise DatasetError(f"no test images in {listing.folder / 'test'} (expected test/good/ and test/<defect>/ "
                           "folders of images); add some.")
    return SplitFiles("test", images, listing.labels, listing.defects, masks)


def _train_files(listing: CategoryFiles) -> SplitFiles:
    """train/good's images (all good, no masks); DatasetError if there are none."""
    folder, train = listing.folder, listing.train
    good = folder / "train" / "good"
    listing.raise_refused([folder / "train", good, *train])
    if not good.is_dir():
        raise DatasetError(f"category folder {folder} has no train/good folder of defect-free images; add one.")
    if not train:
        raise DatasetError(f"no training images in {good} (expected image files of defect-free samples, "
                           "e.g. .png or .jpg, in any format Pillow reads); add some.")
    return SplitFiles("train", train, [0] * len(train), ["good"] * len(train), [None] * len(train))


def _unmarked(paths: list[Path], marked: dict[Path, bool]) -> list[Path]:
    """The mask files of ``paths`` that mark no pixel at their own size: known for those decoded
    just now (``marked``); a mask taken from a cache is read at its own size here."""
    return [path for path in paths if not (marked[path] if path in marked else decode.read_mask(path)[0].any())]


class MVTecAD(torch.utils.data.Dataset):
    """One category of a dataset in MVTec AD layout, decoded once into uint8 tensors.

    Attributes (what training and evaluation use, batched):
        images: uint8 (N, C, H, W), every file resized to ``image_size`` (S for S x S, or
        (H, W)) whatever its own aspect; masks: uint8 (N, H, W) in {0, 1} (zeros for good images);
        labels: int64 (N,), 0 good / 1 defective; defect_types: list[str] ("good" for good);
        paths: list[str]; has_masks: False if a defective image has no mask (pixel metrics
        then cannot be computed); category, split, image_size, in_channels; n_files (the
        image files the split was drawn from: train/good for train and val) and n_val (how many
        of them were held out as val; 0 for test).

    ``val`` is a seeded hold-out of ``val_fraction`` of train/good (at least one image when
    the fraction is > 0 and there are two or more), disjoint from ``train``.
    """

    def __init__(
        self,
        root,
        category: str,
        split: str = "train",
        image_size: ImageSize = DEFAULT_IMAGE_SIZE,
        in_channels: int = 3,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        seed: int = 0,
        cache_dir=None,
        *,
        workers: int | None = None,  # decode threads; None = min(8, CPU count)
        memory_cache: bool = True,  # reuse files decoded earlier in this process
    ):
        image_size = _checked_size(split, image_size, in_channels, val_fraction)
        self.root = Path(root).expanduser()
        self.category, self.split = category, split
        self.image_size, self.in_channels = image_size, in_channels
        self.val_fraction, self.seed = val_fraction, seed
        self._workers = workers or min(8, os.cpu_count() or 1)
        self._memory_cache = memory_cache
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        listing = list_files(self.root, category)
        files = _test_files(listing) if split == "test" else _train_files(listing)
        # What the split was drawn from, so that a too-small train split can say why (pipeline.train.fit).
        self.n_files = len(files.images)  # image files of train/good (train, val) or of test/
        self.n_val = self._n_val(len(files.images)) if files.group == "train" else 0  # of them held out as val

        # Decode everything of this group (train and val share train/good), from the caches when possible.
        disk_file = None if self._cache_dir is None else cache.disk_cache_file(
            self._cache_dir, listing.folder, files.group, image_size, in_channels)
        decoded = cache.decode_files(files.images, [m for m in files.masks if m is not None], image_size,
                                     in_channels, workers=self._workers, memory_cache=memory_cache,
                                     disk_file=disk_file)
        keep = self._select(len(files.images)) if files.group == "train" else list(range(len(files.images)))
        self._take(files, keep, decoded)
        found = self._take_masks(files, keep, decoded)
        said = notes.file_notes(category, listing, files.group, decoded.hashes, self._workers)
        self._warn(said, files.images, found, decoded.marked)

    def _take(self, files: SplitFiles, keep: list[int], decoded: cache.DecodedFiles) -> None:
        """The kept files' paths, labels, defect types, pixels and original sizes."""
        height, width = image_hw(self.image_size)
        self.paths = [str(files.images[i]) for i in keep]
        self.labels = torch.tensor([files.labels[i] for i in keep], dtype=torch.int64)
        self.defect_types = [files.defects[i] for i in keep]
        image_arrays = [decoded.images[files.images[i]].array for i in keep]
        self.images = (
            torch.from_numpy(np.stack(image_arrays)) if keep
            else torch.empty((0, self.in_channels, height, width), dtype=torch.uint8)
        )  # (N, C, H, W)
        self.original_sizes = [tuple(decoded.images[files.images[i]].original_size) for i in keep]  # (width, height)
        self.mask_paths = [files.masks[i] for i in keep]  # None for good images and defective ones without a mask

    def _take_masks(self, files: SplitFiles, keep: list[int], decoded: cache.DecodedFiles) -> MaskFindings:
        """``masks`` and ``has_masks`` of the kept images; DatasetError for a mask of another size than its image."""
        height, width = image_hw(self.image_size)
        self.masks = torch.zeros((len(keep), height, width), dtype=torch.uint8)  # (N, H, W)
        found = MaskFindings()
        for row, i in enumerate(keep):
            if files.labels[i] == 0:
                continue
            path = files.masks[i]
            if path is None:
                found.missing.append(files.images[i])
                continue
            mask, mask_size = decoded.masks[path]
            image_size_px = self.original_sizes[row]
            if tuple(mask_size) != tuple(image_size_px):
                raise DatasetError(
                    f"mask {path} is {mask_size[0]}x{mask_size[1]} px but its image {files.images[i]} is "
                    f"{image_size_px[0]}x{image_size_px[1]} px; a mask must have the size of its image."
                )
            share = float(mask.mean())
            if share == 0:
                found.empty.append(path)
            elif share > notes.INVERTED_MASK_SHARE:
                found.inverted.append((path, share))
            self.masks[row] = torch.from_numpy(mask)
        self.has_masks = not found.missing
        return found

    def _warn(self, said: dict, images: list[Path], found: MaskFindings, marked: dict[Path, bool]) -> None:
        """One warning per kind of oddity found while loading, each naming a count and the first file."""
        category, n_masks = self.category, sum(1 for p in self.mask_paths if p is not None)
        # A thin defect can vanish at the model's size only; the pixel metrics read the file again at
        # the evaluation size (masks_at), so only a file empty at its own size is worth a warning.
        empty = _unmarked(found.empty, marked)
        texts = [said.get(kind) for kind in ("beside", "skipped", "leak", "both")] + [
            notes.missing_mask_note(category, found.missing, said),
            notes.empty_mask_note(category, n_masks, empty),
            notes.inverted_mask_note(category, n_masks, found.inverted),
            notes.twins_note(category, images),
            notes.dark_note(category, self.split, self.images, self.paths),
        ]
        for text in texts:
            if text:
                warnings.warn(text, stacklevel=3)

    def masks_at(self, size: ImageSize | str) -> torch.Tensor | list[np.ndarray]:
        """The ground truth at an evaluation resolution, read from the mask files again (not
        upsampled from ``masks``, which would lose thin defects): uint8 (N, H, W) in {0, 1} for
        S or (H, W) (nearest resize), or for ``size="original"`` a list of (H_i, W_i) uint8
        arrays at each image's own size. Good images (and defective ones without a mask) are
        all zeros. Decoded masks are kept in the process's memory cache.
        """
        if size != "original":
            size = canonical_size(size, what="an evaluation size")
            if min(image_hw(size)) < 1:
                raise ConfigError(f"an evaluation size must be positive, got {size_label(size)}.")
        if size == self.image_size:
            return self.masks
        target = None if size == "original" else size
        decoded = cache.read_masks([p for p in self.mask_paths if p is not None], target, workers=self._workers,
                                   memory_cache=self._memory_cache)
        out = []
        for path, (width, height) in zip(self.mask_paths, self.original_sizes):
            shape = (height, width) if target is None else image_hw(target)
            out.append(decoded[path] if path is not None else np.zeros(shape, dtype=np.uint8))
        if target is None:
            return out
        return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, *image_hw(target)), dtype=torch.uint8)

    # ----------------------------------------------------------------- helpers

    def _n_val(self, n: int) -> int:
        """How many of ``n`` train/good images are held out as val."""
        if self.val_fraction > 0 and n >= 2:
            return min(max(int(round(self.val_fraction * n)), 1), n - 1)  # both splits non-empty whenever possible
        return 0

    def _select(self, n: int) -> list[int]:
        """Indices of this split within train/good: a seeded, disjoint hold-out for val."""
        n_val = self._n_val(n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        val = sorted(order[:n_val])
        return val if self.split == "val" else sorted(order[n_val:])

    # ----------------------------------------------------------------- Dataset protocol

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i].float() / 255.0,  # (C, H, W) in [0, 1]
            "mask": self.masks[i].float(),  # (H, W) in {0, 1}
            "label": int(self.labels[i]),
            "defect_type": self.defect_types[i],
            "path": self.paths[i],
        }

    def __repr__(self) -> str:
        counts = {d: self.defect_types.count(d) for d in dict.fromkeys(self.defect_types)}
        return (
            f"MVTecAD({self.category!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={size_label(self.image_size)}, in_channels={self.in_channels}, counts={counts}, "
            f"has_masks={self.has_masks})"
        )
