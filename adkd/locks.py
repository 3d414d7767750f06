"""Exclusive locks that live as long as the process holding them (``flock``): released the
moment it ends, however it ends, so a killed process never leaves a folder taken."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """Take the lock on ``path`` (created if missing) and write this process into it; the open
    file descriptor holds it. None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def holder(path: Path) -> str:
    """Who holds the lock on ``path``, as its holder wrote it ("pid N on host")."""
    try:
        return Path(path).read_text().strip() or "another process"
    except OSError:
        return "another process"


def release(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock
