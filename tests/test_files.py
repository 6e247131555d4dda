"""pipeline.files.atomic_write: the all-or-nothing write under the results CSV and the checkpoints."""
from __future__ import annotations

import os

import pytest

from pipeline.files import atomic_write, current_umask


def test_atomic_write_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with atomic_write(path, "w") as f:
        f.write("a,b\r\n1,2\n")  # text mode without newline translation: CSV line ends kept as written
    assert path.read_bytes() == b"a,b\r\n1,2\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    with atomic_write(path, "w", permissions=0o640) as f:
        f.write("x")
    assert path.stat().st_mode & 0o777 == 0o640 and os.listdir(tmp_path) == ["table.csv"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(error), atomic_write(path, "wb") as f:
        f.write(b"half of the new")
        raise error("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]
