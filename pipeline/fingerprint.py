"""A fingerprint of one category's data: which image files it has and what they contain.

A results row is only valid for the data it was computed on. Two roots with the same folder
and category names (projA/data/widget, projB/data/widget) or a category whose masks were
repaired must not share rows, so a row's key holds ``data_fingerprint(root, category).digest``.

The files of a category are exactly those the loader reads (``models.mvtec.list_files``): the
train/good and test images and the masks they use, in every format Pillow decodes; nothing
else in the folders is listed, walked or read (a link to a big tree, or to /proc, costs
nothing). Each file's content is hashed with SHA-256 (``models.filehash``, whose process-wide
memo the loader's caches share: a category is hashed once per process). A link the loader
refuses (broken, looping, or leading out of the data root) is not read: it counts by the
sentence refusing it, so the grid still fingerprints every category and only that one fails
when it is loaded. The digest hashes the sorted (relative path, content hash) pairs only:
modification times and where the root lies do not count, so a copy (``cp -r``) of a dataset
has the same digest.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import DatasetError
from models.filehash import content_hashes
from models.mvtec import list_files

FINGERPRINT_VERSION = 1  # bump when what is hashed changes: every digest changes with it
DIGEST_HEX_DIGITS = 16


@dataclass(frozen=True)
class DataFingerprint:
    """What one category's data is: ``digest`` (16 hex digits, for the results key), ``files``
    (relative path with '/' separators -> SHA-256 hex of its content), their count and total size."""

    digest: str
    files: dict[str, str] = field(hash=False)  # the digest stands for it: a fingerprint can be a set member
    n_files: int
    n_bytes: int


@dataclass(frozen=True)
class FileChanges:
    """Relative paths that differ between two ``DataFingerprint.files``, each tuple sorted."""

    changed: tuple[str, ...]  # in both, with different contents
    added: tuple[str, ...]  # only in the new files
    removed: tuple[str, ...]  # only in the old files

    @property
    def n_files(self) -> int:
        """How many paths differ in any way."""
        return len(self.changed) + len(self.added) + len(self.removed)

    def __bool__(self) -> bool:
        return self.n_files > 0


# --------------------------------------------------------------------------- listing the files


def category_files(root, category: str) -> dict[str, Path]:
    """``relative path -> path`` of every file that makes up ``category``'s data (the files the
    loader reads, ``models.mvtec.list_files``), sorted by relative path.

    Raises DatasetError if the category folder does not exist.
    """
    return _listed(root, category)[0]


def _listed(root, category: str) -> tuple[dict[str, Path], dict[Path, str]]:
    """(``category_files``, {path: the sentence refusing it} of the links the loader refuses)."""
    folder = Path(root).expanduser() / category
    if not category or not folder.is_dir():
        raise DatasetError(
            f"category folder {folder} does not exist, so its data cannot be fingerprinted; "
            "check the data root and the category name."
        )
    listing = list_files(root, category)
    train_links = [p for p in (listing.folder / "train", listing.folder / "train" / "good") if p in listing.refused]
    paths = listing.paths() + train_links  # a dead train/good link: the category's only entry, so it counts
    files = dict(sorted((p.relative_to(listing.folder).as_posix(), p) for p in paths))
    return files, listing.refused


# --------------------------------------------------------------------------- hashing


def _unreadable(path: Path, category: str, error: OSError) -> DatasetError:
    return DatasetError(
        f"cannot read {path} ({error.strerror}) to fingerprint the data of {category!r}; "
        "check the file's permissions or remove it."
    )


def _digest(files: dict[str, str]) -> str:
    """First ``DIGEST_HEX_DIGITS`` hex digits of SHA-256 over the sorted (relative path, content hash) pairs."""
    digest = hashlib.sha256(f"data-fingerprint-v{FINGERPRINT_VERSION}\0".encode())
    for rel, content in sorted(files.items()):
        # NUL cannot occur in a file name: the pairs cannot run into each other. fsencode keeps odd names hashable.
        digest.update(os.fsencode(rel) + b"\0" + content.encode() + b"\0")
    return digest.hexdigest()[:DIGEST_HEX_DIGITS]


def data_fingerprint(root, category: str, *, workers: int | None = None) -> DataFingerprint:
    """The fingerprint of ``<root>/<category>``'s data (see the module docstring).

    ``workers``: hashing threads (None = min(``models.filehash.HASH_WORKERS``, CPU count)). Raises DatasetError
    for a missing category folder or an unreadable file or folder.
    """
    paths, refused = _listed(root, category)
    readable = [path for path in paths.values() if path not in refused]
    try:
        contents, n_bytes = content_hashes(readable, workers=workers)
    except OSError as e:
        raise _unreadable(Path(e.filename), category, e) from None
    hashes = dict(zip(readable, contents))
    # A refused link is never read: its sentence stands for it, so fixing the link changes the digest.
    files = {rel: hashes[path] if path not in refused else hashlib.sha256(refused[path].encode()).hexdigest()
             for rel, path in paths.items()}
    return DataFingerprint(digest=_digest(files), files=files, n_files=len(files), n_bytes=n_bytes)


# --------------------------------------------------------------------------- what changed


def compare(old_files: dict[str, str], new_files: dict[str, str]) -> FileChanges:
    """Which relative paths changed content, were added or were removed from ``old_files`` to ``new_files``."""
    return FileChanges(
        changed=tuple(sorted(rel for rel in old_files.keys() & new_files.keys() if old_files[rel] != new_files[rel])),
        added=tuple(sorted(new_files.keys() - old_files.keys())),
        removed=tuple(sorted(old_files.keys() - new_files.keys())),
    )


def describe_change(category: str, old_files: dict[str, str], new_files: dict[str, str]) -> str:
    """One sentence for the log, e.g. "data of 'bottle' changed since the row was written: 3 files
    differ (1 changed, 1 added, 1 removed; first: test/crack/000.png)"."""
    changes = compare(old_files, new_files)
    if not changes:
        return f"data of {category!r} is unchanged since the row was written ({len(new_files)} files)."
    counts = [f"{len(paths)} {kind}" for kind, paths in
              (("changed", changes.changed), ("added", changes.added), ("removed", changes.removed)) if paths]
    first = min(changes.changed + changes.added + changes.removed)
    files = "1 file differs" if changes.n_files == 1 else f"{changes.n_files} files differ"
    return f"data of {category!r} changed since the row was written: {files} ({', '.join(counts)}; first: {first})."
