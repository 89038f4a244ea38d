"""Files that appear whole or not at all: a kill at any moment leaves the previous version (or none), never half."""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``content`` (text, bytes, or a function that writes into a binary file) to a temporary file beside
    ``path``, flush it to disk, then rename it over ``path``: a rename within a folder is atomic."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
