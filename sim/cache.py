"""Where the toolkit keeps files it derives once and reuses across runs: the resized embedded MNIST, compiled kernels.

`$ORGANISM_NETWORKS_CACHE`, else `$XDG_CACHE_HOME/organism-networks`, else `~/.cache/organism-networks`. Everything
in it can be deleted at any time; it is rebuilt on the next use. Writes are atomic (a temporary file renamed into
place), so concurrent runs never read a half-written entry.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache directory (or a subdirectory of it), created if missing; a temporary directory if that fails."""
    base = os.environ.get("ORGANISM_NETWORKS_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "organism-networks")
    path = Path(base, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir(), f"organism-networks-{os.getuid()}", *parts)
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
