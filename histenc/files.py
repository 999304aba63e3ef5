"""Atomic file writes: readers see the old file or the complete new one, never half of one.

Every file the pack writes (weights, job manifests and sections, dataset indexes, training
checkpoints, charts) goes through ``atomic_path``: the data goes to a temporary name in the same
folder, is flushed to disk, and is moved over the final name with ``os.replace`` (atomic on POSIX
and Windows); the folder is synced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it fully, and on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
MAX_NAME = 120


def check_plain_name(name: str, what: str) -> str:
    """``name`` if it is one plain folder or file name on every platform, else one sentence naming it.

    Refused: path separators of any platform (``/`` and ``\\``), drive prefixes (``D:evil``), ``.`` and
    ``..``, control characters (NUL included), Windows' reserved device names and trailing dots or
    spaces, and names over ``MAX_NAME`` characters.
    """
    shown = name if len(name) <= 60 else name[:57] + "..."
    problem = None
    if len(name) > MAX_NAME:
        problem = f"is {len(name)} characters long; use at most {MAX_NAME}"
    elif any(ord(c) < 32 for c in name):
        problem = "contains a control character"
    elif "/" in name or "\\" in name or ":" in name:
        problem = "contains a slash, backslash or colon"
    elif name in (".", "..") or name.rstrip(". ") != name:
        problem = "is or ends with a dot or space"
    elif name.split(".")[0].upper() in _RESERVED:
        problem = "is a name Windows reserves for a device"
    if problem:
        raise ValueError(f"{what} {shown!r} {problem}; use a plain name such as 'my_video_01'.")
    return name
