"""One writer per run directory: an exclusive lock held for a run's whole life, and cleanup of only what it created.

`RunDir.claim(path, new=...)` creates the directory if needed (remembering which directories it made), then takes an
exclusive `fcntl` lock on `run.lock` inside it, before anything else is written there; the lock file holds the
holder's pid, so a second writer (a `sim.run`, a `--resume`, a sweep's run) is refused with one line naming it. The
kernel drops the lock when the holder ends, killed or not, so a stale lock never blocks a resume. On an error path
`discard()` removes only the files and directories this process created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from sim.record import CHECKPOINT_NAME, CONFIG_NAME, RECORD_NAME, RecordError, os_cause

LOCK_NAME = "run.lock"
RUN_FILES = (RECORD_NAME, CONFIG_NAME, CHECKPOINT_NAME)


class RunDirError(RecordError):
    """A run directory that cannot be claimed: held by another writer, already holding a run, or not creatable."""


def _make_dirs(path: Path) -> list[Path]:
    """Create `path` and its missing parents; the directories this call created, outermost first."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.is_dir():
            break
        missing.append(parent)
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
            created.append(directory)
        except FileExistsError:
            if not directory.is_dir():
                raise RunDirError(
                    f"cannot create the run directory {str(path)!r}: {str(directory)!r} is a file"
                ) from None
        except OSError as exc:
            _remove_dirs(created)
            raise RunDirError(f"cannot create the run directory {str(path)!r}: {os_cause(exc)}") from None
    return created


def _remove_dirs(created: list[Path]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: another process's files are never removed


def holder_pid(lock_path: Path) -> str:
    """The pid the lock file names (`unknown` when it names none yet)."""
    for _ in range(25):  # the holder writes its pid right after taking the lock
        try:
            text = lock_path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.02)
    return "unknown"


def _lock(path: Path) -> int:
    """An open descriptor of `path` holding an exclusive lock, with this process's pid written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(
                    f"{str(path.parent)!r} is in use by another writer (pid {holder_pid(path)}); wait for it to end "
                    "or use another directory"
                ) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the lock file after we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class RunDir:
    """This process's exclusive claim on a run directory (see the module's docstring)."""

    def __init__(self, path: Path, fd: int, created_dirs: list[Path], existing: set[str]) -> None:
        self.path = path
        self._fd: int | None = fd
        self.created_dirs = created_dirs
        self.existing = existing  # the run files that were there before this claim

    @classmethod
    def claim(cls, path: str | Path, new: bool) -> RunDir:
        """Lock `path` for one writer. `new`: create it if needed and refuse one that holds a record already;
        otherwise (a resume) it must exist. RunDirError, one line, names what is wrong."""
        path = Path(path)
        if new:
            if path.exists() and not path.is_dir():
                raise RunDirError(f"{str(path)!r} is an existing file, not a directory")
            created = _make_dirs(path)
        elif not path.is_dir():
            raise RunDirError(f"{str(path)!r} is not a run directory")
        else:
            created = []
        try:
            fd = _lock(path / LOCK_NAME)
        except RunDirError:
            _remove_dirs(created)
            raise
        except OSError as exc:
            _remove_dirs(created)
            raise RunDirError(f"cannot lock the run directory {str(path)!r}: {os_cause(exc)}") from None
        claim = cls(path, fd, created, {name for name in RUN_FILES if (path / name).exists()})
        if new and RECORD_NAME in claim.existing:
            claim.release()
            raise RunDirError(f"{str(path)!r} already holds a run record (use --resume to continue it)")
        return claim

    def release(self) -> None:
        """Give the directory up (the lock file stays; the next writer takes it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Error path: remove the run files and directories this claim created, then release."""
        for name in RUN_FILES:
            if name not in self.existing:
                (self.path / name).unlink(missing_ok=True)
        for leftover in (
            (self.path / CHECKPOINT_NAME).with_suffix(".tmp"),
            (self.path / CONFIG_NAME).with_suffix(".tmp.yaml"),
            (self.path / RECORD_NAME).with_suffix(".resume.h5"),
        ):
            leftover.unlink(missing_ok=True)
        if self.created_dirs:
            (self.path / LOCK_NAME).unlink(missing_ok=True)  # still held: a waiting writer re-checks the inode
        self.release()
        _remove_dirs(self.created_dirs)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is None:
            self.release()
        else:
            self.discard()
