"""Output files that are never half-written, never shared by two writers, and never silently left behind.

A command writes OUT under a temporary name beside it, `.OUT.<pid>-<random>.partial[SUFFIX]`, and renames it
into place when the work is complete (`publish`, with the permissions the user's umask gives new files;
`atomic_write` does both for bytes). The process id in the name tells a later run whether the writer is still
running: if not, the file is a stale leftover of a killed run and `warn_stale` names it. `DestinationLock` keeps
a second writer off the same OUT.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import sys
from pathlib import Path


def partial_path(dest, suffix: str = "") -> Path:
    """A fresh temporary name beside `dest` carrying this process's id (`suffix` keeps a format's extension)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_partials(dest) -> list:
    """Temporary files of writes to `dest` whose process is gone (hidden `.OUT.<pid>-...partial*`, and the store
    writer's `OUT.<pid>-....partial`)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.?{re.escape(dest.name)}\.(\d+)-[0-9a-f]+\.partial")
    found = []
    for p in sorted(dest.parent.iterdir()):
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            found.append(p)
    return found


def warn_stale(dest, prog: str) -> list:
    """Say where stale partial files of earlier, interrupted writes to `dest` are; returns them."""
    stale = stale_partials(dest)
    if stale:
        print(f"{prog}: {len(stale)} partial file(s) left by an interrupted earlier write to {dest}: "
              f"{', '.join(str(p) for p in stale)} (not used; remove them when you no longer need them)",
              file=sys.stderr)
    return stale


def user_mode() -> int:
    """The mode a new regular file gets under the current umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def publish(tmp, dest) -> Path:
    """Rename a finished temporary file onto `dest`, first giving it the permissions of a normal new file."""
    os.chmod(tmp, user_mode())
    os.replace(tmp, dest)
    return Path(dest)


def atomic_write(dest, data: bytes) -> Path:
    """Write bytes to `dest` through a temporary file: a kill leaves the old file or the new one, never half."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    try:
        tmp.write_bytes(data)
        return publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class DestinationLock:
    """An exclusive lock on `dest` for one writer (fcntl.flock on a hidden `.OUT.lock` beside it). A second
    writer gets a clear error instead of both reporting success and the later silently winning."""

    def __init__(self, dest, prog: str):
        self.dest, self.prog = Path(dest), prog
        self.path = self.dest.with_name(f".{self.dest.name}.lock")
        self.fd = None

    def __enter__(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, user_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OSError(f"another {self.prog} is writing {self.dest} (lock {self.path} is held); wait for "
                              f"it to finish or choose another output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the lock file between our open and flock: take a fresh one
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)  # still holding the lock: a waiting writer re-checks the inode
        os.close(self.fd)
        self.fd = None
        return False


def refuse_existing(paths, overwrite: bool) -> None:
    """Keep a user's earlier results: a ValueError naming the outputs that exist, unless `overwrite` was given."""
    existing = [str(p) for p in paths if p is not None and Path(p).is_file()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: choose another "
                         f"output, or pass --overwrite to replace {'it' if len(existing) == 1 else 'them'}")
