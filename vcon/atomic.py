"""Files that appear whole or not at all: a kill at any moment leaves the previous version (or none), never half;
a full disk is said as such (``DiskFull``), the previous version kept and no temporary file left."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import IO, Callable, Iterator

from vcon.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None],
                 previous: str | Path | None = None) -> Path:
    """Write ``content`` (text, bytes, or a function that writes into a binary file) to a temporary file beside
    ``path``, flush it to disk, then rename it over ``path``: a rename within a folder is atomic. With ``previous``,
    the version it replaces is renamed to ``previous`` first (so both are whole at any moment, or ``previous`` alone
    for the instant between the two renames)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kept = f"the previous {path.name} is kept as it was" if path.exists() else f"no {path.name} was written"
    try:
        with said_when_full(path.parent, str(path), kept), open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def disk_full(error: BaseException, folder: Path, what: str, kept: str) -> DiskFull | None:
    """``error`` said as a ``DiskFull`` naming ``folder`` and its free bytes, when a full disk caused it; else None."""
    if not _no_space(error):
        return None
    try:
        free = f"{shutil.disk_usage(folder).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"the disk is full: {what} could not be written ({free} in {folder}); {kept}. Free some space "
                    "there and run the same command again")


def _no_space(error: BaseException | None) -> bool:
    """Whether ENOSPC or EDQUOT is behind ``error``. torch's zip writer reports a full disk as ``RuntimeError:
    [enforce fail ...] unexpected pos``, the ``OSError`` only in its context; safetensors as "No space left on
    device (os error 28)" in its message."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno in NO_SPACE
                or any(os.strerror(code) in str(error) for code in NO_SPACE)):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def said_when_full(folder: Path, what: str, kept: str) -> Iterator[None]:
    """Re-raise an error that a full disk caused as ``disk_full`` says it; any other error as it is."""
    try:
        yield
    except Exception as error:
        full = disk_full(error, folder, what, kept)
        if full is None:
            raise
        raise full from error
