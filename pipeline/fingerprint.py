"""A fingerprint of one category's data: which image files it has and what they contain.

A results row is only valid for the data it was computed on. Two roots with the same folder
and category names (projA/data/widget, projB/data/widget) or a category whose masks were
repaired must not share rows, so a row's key holds ``data_fingerprint(root, category).digest``.

The files of a category are the visible image files (``models.mvtec.IMAGE_EXTENSIONS``, any
case) under ``train/``, ``test/`` and ``ground_truth/``, recursively; hidden files and
folders are skipped, symlinks are followed (their target's content counts). Each file's
content is hashed with SHA-256 (with the SHA extensions of current CPUs it is faster than
BLAKE2b: 1.8 vs 1.3 GB/s on the bench machine, bench/README.md "Data fingerprint"). The
digest hashes the sorted (relative path, content hash) pairs only: modification times and
where the root lies do not count, so a copy (``cp -r``) of a dataset has the same digest.

Content hashes are kept in a process-wide memo keyed by the file's identity (path, device,
inode, size, mtime, ctime): fingerprinting the same files again in one process costs one
``stat`` per file. There is no on-disk memo: a cold fingerprint costs 2-5 % of the category's
first load (bench/README.md), so a new process simply hashes again.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import DatasetError
from models.mvtec import IMAGE_EXTENSIONS

DATA_FOLDERS = ("train", "test", "ground_truth")  # of a category; anything else in it is not data
FINGERPRINT_VERSION = 1  # bump when what is hashed changes: every digest changes with it
DIGEST_HEX_DIGITS = 16
READ_CHUNK = 1 << 20  # bytes per read: large reads keep the per-call overhead (and the GIL) out of the way
HASH_WORKERS = 8  # threads at most; hashlib and file reads release the GIL, so threads use every core

_MEMO: dict[tuple, str] = {}  # file identity -> content hash (hex)
_MEMO_LOCK = threading.Lock()


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


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path, prefix: str, ancestors: frozenset, out: dict[str, Path]) -> None:
    """Add ``relative path -> path`` for every visible image file under ``folder`` to ``out``.

    Symlinked folders are followed like the loader follows them, also when two paths lead to one
    folder (each path is data the loader reads); ``ancestors`` (device, inode of the folders above)
    stops a symlink loop from walking forever.
    """
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in ancestors:
            return
        ancestors = ancestors | {(st.st_dev, st.st_ino)}
        entries = list(os.scandir(folder))
    except OSError as e:
        raise DatasetError(
            f"cannot list folder {folder} ({e.strerror}) to fingerprint its data; check the folder's permissions."
        ) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():  # follows symlinks
            _walk_images(path, f"{prefix}{entry.name}/", ancestors, out)
        elif entry.is_file() and _is_image_name(entry.name):  # a dangling symlink is neither (the loader then names it)
            out[f"{prefix}{entry.name}"] = path


def category_files(root, category: str) -> dict[str, Path]:
    """``relative path -> path`` of every file that makes up ``category``'s data, sorted by relative path.

    Raises DatasetError if the category folder does not exist.
    """
    folder = Path(root).expanduser() / category
    if not category or not folder.is_dir():
        raise DatasetError(
            f"category folder {folder} does not exist, so its data cannot be fingerprinted; "
            "check the data root and the category name."
        )
    found: dict[str, Path] = {}
    for name in DATA_FOLDERS:
        if (folder / name).is_dir():
            _walk_images(folder / name, f"{name}/", frozenset(), found)
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- hashing


def hash_file(path) -> str:
    """SHA-256 (hex) of the content of the file at ``path``, read in ``READ_CHUNK`` pieces.

    (``hashlib.file_digest`` does the same from Python 3.11 on; this also runs on 3.10.)
    """
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _identity(path: Path) -> tuple:
    """What names a file's content for the memo: its absolute path, and the device, inode, size,
    mtime and ctime of the file it leads to (``stat`` follows symlinks). Device and inode name the
    real file as resolving the path would, at a tenth of the cost (resolving is one ``lstat`` per
    path component). ctime is there because, unlike mtime, it cannot be set back (``cp -p``,
    ``touch -d``): a file rewritten in place is never taken for the old one."""
    st = path.stat()
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def clear_memo() -> None:
    """Forget every content hash kept in this process (the next fingerprint reads every file)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _unreadable(path: Path, category: str, error: OSError) -> DatasetError:
    return DatasetError(
        f"cannot read {path} ({error.strerror}) to fingerprint the data of {category!r}; "
        "check the file's permissions or remove it."
    )


def _content_hashes(paths: list[Path], category: str, workers: int) -> tuple[list[str], int]:
    """(content hash of each path, total bytes): one ``stat`` per file, and a read only for the
    files the memo does not know (in a thread pool when there are several)."""
    identities = []
    for path in paths:
        try:
            identities.append(_identity(path))
        except OSError as e:
            raise _unreadable(path, category, e) from None
    with _MEMO_LOCK:
        known = [_MEMO.get(identity) for identity in identities]
    todo = [i for i, content in enumerate(known) if content is None]

    def hash_one(i: int) -> str:
        try:
            return hash_file(paths[i])
        except OSError as e:
            raise _unreadable(paths[i], category, e) from None

    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(min(workers, len(todo))) as pool:
            hashed = list(pool.map(hash_one, todo))
    else:
        hashed = [hash_one(i) for i in todo]
    with _MEMO_LOCK:
        for i, content in zip(todo, hashed):
            known[i] = _MEMO[identities[i]] = content
    return known, sum(identity[3] for identity in identities)


def _digest(files: dict[str, str]) -> str:
    """First ``DIGEST_HEX_DIGITS`` hex digits of SHA-256 over the sorted (relative path, content hash) pairs."""
    digest = hashlib.sha256(f"data-fingerprint-v{FINGERPRINT_VERSION}\0".encode())
    for rel, content in sorted(files.items()):
        # NUL cannot occur in a file name: the pairs cannot run into each other. fsencode keeps odd names hashable.
        digest.update(os.fsencode(rel) + b"\0" + content.encode() + b"\0")
    return digest.hexdigest()[:DIGEST_HEX_DIGITS]


def data_fingerprint(root, category: str, *, workers: int | None = None) -> DataFingerprint:
    """The fingerprint of ``<root>/<category>``'s data (see the module docstring).

    ``workers``: hashing threads (None = min(``HASH_WORKERS``, CPU count)). Raises DatasetError
    for a missing category folder or an unreadable file or folder.
    """
    paths = category_files(root, category)
    workers = workers or min(HASH_WORKERS, os.cpu_count() or 1)
    contents, n_bytes = _content_hashes(list(paths.values()), category, workers)
    files = dict(zip(paths, contents))
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
