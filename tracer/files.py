"""Files the tracer writes: atomic writes (temp file, rename) that follow the umask."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)  # elsewhere the only way to read it is to set it: straight back
        os.umask(mask)
        return mask


def follow_umask(root) -> None:
    """Give the directory ``root`` and everything in it the modes a plain open() or mkdir() gives (0666 or
    0777 less the umask): writers that go through temp files (transformers' safetensors, mkstemp,
    mkdtemp) leave theirs 0600 or 0700, unreadable to the rest of a group that shares a cache."""
    mask = _umask()
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o777 & ~mask)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):  # a link's mode is its target's business
                os.chmod(path, 0o666 & ~mask)


def write_atomic(path: str, write) -> None:
    """``write(tmp_path)`` fills a temp file in the target's directory, then it replaces ``path`` at once."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        # NB: mkstemp makes 0600 files; the result should have the mode a plain open() gives (umask applies)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
