"""Small file-system helpers shared by the writers of results and checkpoints."""
from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once). Files
    written through ``tempfile.mkstemp`` (mode 0600) get ``0o666 & ~umask``, like any file."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
