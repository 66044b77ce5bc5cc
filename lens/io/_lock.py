"""One writer per output folder: an OS file lock on ``<folder>/.lens.lock``.

``fcntl.flock`` locks belong to an open file, so the kernel drops them when the holder
exits, however it exits (a crash or SIGKILL included): a lock is never stale. Two opens in
one process conflict too, so two sweeps started from threads of one process are refused
as well. The lock file stays (empty) in the folder; removing it would race with a waiting
writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from ..errors import FolderBusyError

LOCK_FILE = ".lens.lock"


class FolderLock:
    """``with FolderLock(folder, "sweep"):`` — refuses at once if the folder is held."""

    def __init__(self, folder: str | os.PathLike[str], what: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(
                f"{self.path.parent} is being written by another {self.what} that is still "
                f"running (it holds {self.path}). Wait for it to finish, or point this one "
                "at another folder. The lock goes away by itself when that process exits, "
                "also after a crash.") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
