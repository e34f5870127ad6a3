"""One atomic writer: a file appears whole (with the usual umask permissions) or not at all."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path"]


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it on success,
    removed on failure (so no partial output file is ever left behind). The file gets the
    permissions a plain ``open(path, "w")`` would (0o666 minus the umask), not mkstemp's 0o600.

    >>> with atomic_path("out/result.json") as tmp:
    ...     tmp.write_text("{}")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp" + self.path.suffix,
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        else:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
        return False
