"""Content hashes of files, memoised in the process: what names a file's content.

The loader's caches (``models.mvtec``: memory and ``cache_dir``) and the data fingerprint
(``pipeline.fingerprint``) both key a file by the SHA-256 of its bytes, from this one memo:
an image replaced by another of the same size and modification time is never taken for the
old one, and a grid that fingerprinted a category first loads it with one ``stat`` per file.

SHA-256 because, with the SHA extensions of current CPUs, it is faster than BLAKE2b (1.8 vs
1.3 GB/s on the bench machine, bench/README.md "Data fingerprint"). The memo is keyed by the
file's identity (path, device, inode, size, mtime, ctime); there is no on-disk memo: a cold
hash costs 2-5 % of a category's first load, so a new process simply hashes again.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

READ_CHUNK = 1 << 20  # bytes per read: large reads keep the per-call overhead (and the GIL) out of the way
HASH_WORKERS = 8  # threads at most; hashlib and file reads release the GIL, so threads use every core

_MEMO: dict[tuple, str] = {}  # file identity -> content hash (hex)
_MEMO_LOCK = threading.Lock()


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


def file_identity(path) -> tuple:
    """What names a file's content for the memo: its absolute path, and the device, inode, size,
    mtime and ctime of the file it leads to (``stat`` follows symlinks). ctime is there because,
    unlike mtime, it cannot be set back (``cp -p``, ``touch -d``, ``os.utime``): a file rewritten
    in place is never taken for the old one. Size is its 4th element."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def clear_memo() -> None:
    """Forget every content hash kept in this process (the next request reads every file)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def content_hashes(paths: list[Path], *, workers: int | None = None) -> tuple[list[str], int]:
    """(SHA-256 hex of each file's content, their total size in bytes): one ``stat`` per file,
    and a read only for the files the memo does not know (in a thread pool when there are
    several; ``workers`` None = min(``HASH_WORKERS``, CPU count)). An unreadable file raises
    its ``OSError`` (``filename`` names it)."""
    identities = [file_identity(path) for path in paths]
    with _MEMO_LOCK:
        known = [_MEMO.get(identity) for identity in identities]
    todo = [i for i, content in enumerate(known) if content is None]
    workers = workers or min(HASH_WORKERS, os.cpu_count() or 1)
    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(min(workers, len(todo))) as pool:
            hashed = list(pool.map(lambda i: hash_file(paths[i]), todo))
    else:
        hashed = [hash_file(paths[i]) for i in todo]
    with _MEMO_LOCK:
        for i, content in zip(todo, hashed):
            known[i] = _MEMO[identities[i]] = content
    return known, sum(identity[3] for identity in identities)
