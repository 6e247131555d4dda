"""Small file-system helpers shared by the writers of results and checkpoints."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once). Files
    written through ``tempfile.mkstemp`` (mode 0600) get ``0o666 & ~umask``, like any file."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, permissions: int | None = None):
    """Write ``path`` all or nothing: yields a temporary file in the same folder, then fsyncs it
    and renames it over ``path``. On any error (also Ctrl-C, or OSError from creating the temp
    file) the temporary file is removed, ``path`` is left as it was, and the error propagates.

    ``permissions``: the new file's mode (default: what ``open`` would give, 0o666 & ~umask).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask() if permissions is None else permissions)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_folder(folder, *, what: str, fix: str, error: type[Exception] = OSError) -> Path:
    """Create ``folder`` (and its parents) and check it is writable, or raise ``error`` with one
    sentence naming ``what`` it is for and ending in ``fix`` (e.g. "pass another --checkpoint-dir")."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "a file of that name is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise error(f"cannot create the {what} {str(folder)!r} ({why}); {fix}.") from None
    if not os.access(folder, os.W_OK):
        raise error(f"the {what} {str(folder)!r} is not writable; make it writable or {fix}.")
    return folder
