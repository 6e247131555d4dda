"""Decoded files kept for reuse: a process-wide memory cache and an optional disk cache.

Both are keyed by the file's content hash (``models.filehash``, the data fingerprint's), so a
file replaced by another of the same size and modification time is decoded again, and a
copied dataset reuses its decodes. The memory cache (least recently used first out, at most
``MEMORY_CACHE_LIMIT`` bytes) lets train, val and test and every model of a grid share the
decodes; the disk cache (``cache_dir``) keeps one file per category, split group, size and
channel count, rewritten atomically.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base import ImageSize, size_label
from ..errors import DatasetError
from ..filehash import content_hashes
from . import decode
from .decode import DECODE_VERSION, MASK_VERSION, Decoded

CACHE_FORMAT = 2  # of the cache_dir files: 2 keys entries by content hash (1 by path, size and mtime)
MEMORY_CACHE_LIMIT = 4 * 1024**3  # bytes of decoded arrays kept across datasets (LRU)

# --------------------------------------------------------------------------- memory

_MEMORY_CACHE: OrderedDict = OrderedDict()  # key -> Decoded, least recently used first
_MEMORY_BYTES = 0
_MEMORY_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget every decoded file kept in this process."""
    global _MEMORY_BYTES
    with _MEMORY_LOCK:
        _MEMORY_CACHE.clear()
        _MEMORY_BYTES = 0


def _memory_get(key):
    with _MEMORY_LOCK:
        hit = _MEMORY_CACHE.get(key)
        if hit is not None:
            _MEMORY_CACHE.move_to_end(key)
        return hit


def _memory_put(key, value) -> None:
    global _MEMORY_BYTES
    with _MEMORY_LOCK:
        if key in _MEMORY_CACHE:
            return
        _MEMORY_CACHE[key] = value
        _MEMORY_BYTES += value[0].nbytes
        while _MEMORY_BYTES > MEMORY_CACHE_LIMIT and len(_MEMORY_CACHE) > 1:
            _, (old, _) = _MEMORY_CACHE.popitem(last=False)
            _MEMORY_BYTES -= old.nbytes


def file_hashes(paths: list[Path], workers: int) -> dict[Path, str]:
    """{path: SHA-256 of its content} (``models.filehash``, memoised: the data fingerprint's hashes)."""
    try:
        hashes, _ = content_hashes(paths, workers=workers)
    except PermissionError as e:
        raise DatasetError(f"cannot read image {e.filename} (permission denied); check the file's "
                           "permissions.") from None
    except OSError as e:
        raise DatasetError(f"cannot read {e.filename} ({e.strerror}); check the file's permissions.") from None
    return dict(zip(paths, hashes))


# --------------------------------------------------------------------------- disk


def disk_cache_file(cache_dir: Path, category_dir: Path, group: str, image_size: ImageSize,
                    in_channels: int) -> Path:
    """The cache file of one category's split group (train/good, or test/) at one size and channel count."""
    digest = hashlib.sha1(str(category_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{category_dir.name}-{group}-{size_label(image_size)}px-{in_channels}ch-{digest}.pt"


def _disk_load(file: Path) -> dict:
    """{(kind, content hash): Decoded} from a cache file; {} if absent, stale (another decode
    version or cache format: rebuilt without a word) or unreadable (rebuilt with a warning)."""
    if not file.is_file():
        return {}
    try:
        blob = torch.load(file, weights_only=True)
        if (blob.get("version"), blob.get("mask_version"), blob.get("format")) != (DECODE_VERSION, MASK_VERSION,
                                                                                    CACHE_FORMAT):
            return {}
        return {(e["kind"], e["sha256"]): Decoded(e["data"].numpy(), tuple(e["original_size"]))
                for e in blob["entries"]}
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        # stacklevel 3: _disk_load, decode_files, then MVTecAD.__init__
        warnings.warn(f"ignoring unreadable dataset cache {file} ({e}); it will be rewritten.", stacklevel=3)
        return {}


def _disk_save(file: Path, entries: dict) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves a half cache."""
    file.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "version": DECODE_VERSION,
        "mask_version": MASK_VERSION,
        "format": CACHE_FORMAT,
        "entries": [
            {"kind": k[0], "sha256": k[1],
             "data": torch.from_numpy(np.ascontiguousarray(v[0])), "original_size": list(v[1])}
            for k, v in entries.items()
        ],
    }
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, file)


# --------------------------------------------------------------------------- a split group's files


@dataclass
class DecodedFiles:
    """Every file of a split group, decoded (or taken from a cache)."""

    images: dict[Path, Decoded]
    masks: dict[Path, Decoded]  # at the images' size
    hashes: dict[Path, str]  # content hash of each image and mask
    marked: dict[Path, bool]  # masks decoded now: whether the file marks any pixel at its own size


def _decode_now(jobs: list[tuple[str, Path]], image_size: ImageSize, in_channels: int,
                workers: int) -> tuple[list[Decoded], dict[Path, bool]]:
    """Decode ``jobs`` ((kind, path) pairs), in a thread pool when there are several, and note
    for each mask whether it marks any pixel at its own size (an empty-mask warning needs it)."""
    marked: dict[Path, bool] = {}

    def run(job):
        kind, path = job
        if kind == "image":
            return decode.decode_image(path, image_size, in_channels)
        pixels, original_size = decode.read_mask(path)
        marked[path] = bool(pixels.any())
        return Decoded(decode.resize_mask(pixels, image_size), original_size)

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, jobs)), marked
    return [run(job) for job in jobs], marked


def decode_files(images: list[Path], masks: list[Path], image_size: ImageSize, in_channels: int, *,
                 workers: int, memory_cache: bool, disk_file: Path | None) -> DecodedFiles:
    """Every image (at ``image_size``, ``in_channels``) and mask (at ``image_size``) given, decoding
    only what no cache holds; the caches are then given what was decoded (the disk cache file
    ``disk_file``, if any, is rewritten with the group's current files only: entries of deleted
    or changed files are dropped)."""
    jobs = [("image", p) for p in images] + [("mask", p) for p in masks]
    hashes = file_hashes([p for _, p in jobs], workers)
    ids = {job: (job[0], hashes[job[1]]) for job in jobs}  # a file's content names it, not its path or mtime

    def key(job):  # masks do not depend on the channel count
        return (job[0], image_size, in_channels if job[0] == "image" else 0, hashes[job[1]])

    disk = _disk_load(disk_file) if disk_file is not None else None
    out, todo = {}, []
    for job in jobs:
        hit = _memory_get(key(job)) if memory_cache else None
        if hit is None and disk is not None:
            hit = disk.get(ids[job])
        if hit is None:
            todo.append(job)
        else:
            out[job] = hit
    marked = {}
    if todo:
        results, marked = _decode_now(todo, image_size, in_channels, workers)
        out.update(zip(todo, results))
    if memory_cache:
        for job, value in out.items():
            _memory_put(key(job), value)
    if disk_file is not None and todo:
        _disk_save(disk_file, {ids[j]: out[j] for j in jobs})
    return DecodedFiles(images={p: v for (kind, p), v in out.items() if kind == "image"},
                        masks={p: v for (kind, p), v in out.items() if kind == "mask"},
                        hashes=hashes, marked=marked)


def read_masks(paths: list[Path], image_size: ImageSize | None, *, workers: int,
               memory_cache: bool) -> dict[Path, np.ndarray]:
    """{path: uint8 (H, W) mask in {0, 1}} at ``image_size`` (None: each at its own size), through
    the memory cache (shared with ``decode_files`` at the same size)."""
    hashes = file_hashes(paths, workers)

    def read(path: Path) -> np.ndarray:
        key = ("mask", image_size if image_size is not None else 0, 0, hashes[path])
        hit = _memory_get(key) if memory_cache else None
        if hit is None:
            hit = decode.decode_mask(path, image_size)
            if memory_cache:
                _memory_put(key, hit)
        return hit[0]

    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        return dict(zip(paths, pool.map(read, paths)))
