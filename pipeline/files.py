"""Small file-system helpers shared by the writers of results and checkpoints."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

MAX_NAME_BYTES = 200  # a plain name's UTF-8 length: well under the 255 bytes file systems allow per name


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


def plain_name(name) -> str:
    """``name`` (a dataset, category or model name, which may come from a folder, a marker file or
    a CSV cell) as one plain file or folder name that stays inside the folder it is joined to.

    Letters, digits and ``-_.`` are kept and anything else (``/``, ``\\``, NUL, spaces, bytes that
    are not UTF-8) becomes ``_``, so ordinary names are unchanged (``demo``, ``wïdget 1`` ->
    ``wïdget_1``). A name that would still be special or hidden (empty, ``.``, ``..``, ``.x``) or
    too long gets a short hash of the exact name instead of its leading dots (or its tail), so
    it stays distinct. Names that differ only in the characters replaced by ``_`` share a
    folder, which is harmless: every file in these folders is named by a hash of its job."""
    text = str(name)
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    if kept and not kept.startswith(".") and len(kept.encode()) <= MAX_NAME_BYTES:
        return kept
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = kept.lstrip(".").encode()[: MAX_NAME_BYTES - 9].decode(errors="ignore")  # room for "-" and the digest
    return f"{stem}-{digest}" if stem else digest


def is_plain_name(name) -> bool:
    """True if ``name`` is a string that ``plain_name`` keeps as it is: one name that cannot
    leave its folder (no ``/``, ``\\``, NUL, ``..``; not hidden)."""
    return isinstance(name, str) and plain_name(name) == name


def shown_name(name) -> str:
    """``name`` as text for a message: each byte that is not UTF-8 as ``\\xNN`` (Python keeps
    such bytes of a file name as surrogate escapes, which no CSV or JSON can hold)."""
    return str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def undecodable_names(names) -> list[str]:
    """The names among ``names`` that were bytes which are not UTF-8 (e.g. Latin-1 names from a
    zip made on Windows), as ``shown_name`` writes them."""
    return [shown_name(name) for name in names if shown_name(name) != name]
