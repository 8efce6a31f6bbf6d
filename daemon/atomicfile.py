"""Replacing a file so that a kill or power cut at any instant leaves the old or the new version.

Temp file in the same folder, fsync, rename over the target, fsync the folder (a rename is
durable only once its directory is). With ``previous``, the version being replaced is kept
under that name: a hard link to it is renamed over the old ``previous`` first, so there is no
instant without a complete previous version either. Used for the calibration state, the camera
ROIs and shelfcal's files.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Sync a directory after a rename in it; filesystems that refuse are not worth failing over."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str, *, previous: str | Path | None = None,
                 before_replace: Callable[[str], None] | None = None) -> Path:
    """Atomically replace ``path`` with ``data`` (str is written as UTF-8).

    ``previous``: keep the replaced version under this path. ``before_replace(tmp_path)`` runs
    once the new content is on disk and before the rename (to validate it, copy the mode...);
    anything it raises leaves ``path`` untouched. The temp file never survives an error."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        if previous is not None and path.exists():
            prev_tmp = tmp + ".prev"
            os.link(path, prev_tmp)
            os.replace(prev_tmp, previous)
            # rename() between two links of one file does nothing and keeps both names: after a
            # writer killed between these two renames, ``previous`` already is ``path``'s file
            if os.path.lexists(prev_tmp):
                os.unlink(prev_tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        for leftover in (tmp, tmp + ".prev"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    return path
