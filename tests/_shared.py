"""Access to ../shared (parity tensors, manifest). Skips with a reason when absent;
with IRBLOCKS_REQUIRE_SHARED=1 (set by .ci/run) a missing folder fails instead."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("IRBLOCKS_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"{p} is absent (the project's ../shared folder with the official parity data)"
        if os.environ.get("IRBLOCKS_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; IRBLOCKS_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(msg)
    return p


def manifest() -> dict:
    return json.loads(shared_path("parity", "manifest.json").read_text())
