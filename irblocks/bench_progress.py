"""pytest plugin of ``irblocks bench``: the run's progress through :mod:`irblocks.progress`.

Loaded with ``-p irblocks.bench_progress`` by :mod:`irblocks.bench`, which collects pytest's
own report and prints it when the run ends (so the live display is this one bar: tests
done, rate, ETA, the benchmark running now). Writes to the process's standard error
(file descriptor 2), outside pytest's output capture.
"""

from __future__ import annotations

import os

_state: dict = {}


def pytest_collection_finish(session) -> None:
    from irblocks.progress import progress

    stream = os.fdopen(os.dup(2), "w", buffering=1)
    _state["stream"] = stream
    _state["bar"] = progress(total=len(session.items), desc="bench", unit="test", stream=stream)


def pytest_runtest_logstart(nodeid, location) -> None:
    bar = _state.get("bar")
    if bar is not None:
        bar.set_postfix_str(nodeid.rsplit("::", 1)[-1][:50], refresh=False)


def pytest_runtest_logfinish(nodeid, location) -> None:
    bar = _state.get("bar")
    if bar is not None:
        bar.update(1)


def pytest_sessionfinish(session, exitstatus) -> None:
    bar = _state.pop("bar", None)
    if bar is not None:
        bar.close()
    stream = _state.pop("stream", None)
    if stream is not None:
        stream.close()
