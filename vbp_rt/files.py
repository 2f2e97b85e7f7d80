"""Writing files so that nothing is lost: a temporary file beside the target, renamed over it when complete."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the user's umask lets a new file have it (mkstemp makes 0600 files; others follow the umask)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def atomic_write(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder: readers see the old file or the new one,
    never a part; the new file's mode follows the user's umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
