"""The one progress display of the command line (train, eval, restore, bench, summary, check...).

Built on tqdm: a live bar with rate and ETA on a terminal; off a terminal (a log file, a
pipe, a batch job) the same status is written as whole lines, at most one every
``interval`` seconds (and every ``every`` items when given), plus the final line.

```python
from irblocks.progress import progress
with progress(total=len(files), desc="restore", unit="img") as bar:
    for f in files:
        ...
        bar.update(1)
for item in progress(items, desc="eval"):     # or wrap an iterable
    ...
with progress(desc="summary", total=2, unit="step") as bar:
    bar.set_description("counting FLOPs"); ...; bar.update(1)
```

``enabled=False`` gives a silent bar with the same methods (no output at all);
``terminal_only=True`` one that is silent off a terminal (``summary``, ``check``, ``convert``:
a live status while they work, nothing in logs).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable, Optional, TextIO

__all__ = ["progress", "LineStream"]

# seconds between lines off a terminal unless the caller asks otherwise
OFF_TERMINAL_INTERVAL = 10.0


class LineStream:
    """A file-like wrapper that turns tqdm's carriage-return repaints into whole lines, for
    streams that are not terminals (a repaint of the same count, e.g. on close, is dropped)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.strip()
            # the status without its timing and bar (whose width follows the rate's text)
            key = re.sub(r"\|[^|]*\|", "|", part.split("[")[0])
            if part and key != self._last:
                self.stream.write(part + "\n")
                self._last = key
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Optional[Iterable] = None,
    *,
    total: Optional[float] = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    stream: Optional[TextIO] = None,
    interval: Optional[float] = None,
    every: Optional[int] = None,
    initial: int = 0,
    leave: bool = True,
    terminal_only: bool = False,
):
    """A tqdm bar on ``stream`` (default stderr); see the module docstring.

    Args:
        iterable: items to wrap (optional). total: expected count (None: unknown, no ETA).
        desc: label. unit: item name ("step", "img"...). enabled: False -> silent.
        interval: seconds between lines off a terminal (default 10).
        every: off a terminal, also at most one line per this many items.
        initial: starting count (a resumed run). leave: keep the bar after it closes.
        terminal_only: show nothing off a terminal (short commands such as ``summary``,
            whose output and one-line errors should not be mixed with status lines in logs).
    """
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    tty = _is_tty(stream)
    kw: dict[str, Any] = dict(
        total=total,
        desc=desc or None,
        unit=unit,
        initial=initial,
        disable=not enabled or (terminal_only and not tty),
        leave=leave,
        dynamic_ncols=tty,
    )
    if tty:
        kw["file"] = stream
    else:
        kw.update(
            file=LineStream(stream),
            mininterval=OFF_TERMINAL_INTERVAL if interval is None else interval,
            ascii=True,
            ncols=100,
        )
        if every:
            kw["miniters"] = every
    if iterable is not None:
        return tqdm(iterable, **kw)
    return tqdm(**kw)
