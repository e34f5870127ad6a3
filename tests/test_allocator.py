"""``irblocks.keep_freed_memory`` / ``IRBLOCKS_MALLOC`` (README "Execution switches"): the
heap keeps freed blocks, so a 64 MiB tensor allocated again and again costs no page faults;
the switch, the user's own ``GLIBC_TUNABLES`` and a typo are respected; the network-running
commands apply it. The setting is process-wide and one-way, so its effect is measured in
subprocesses."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import irblocks.allocator as allocator
from irblocks.cli import COMMANDS, main

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
PAGES_64MIB = (64 << 20) // 4096          # faults when every 4 KiB page is mapped afresh

PROBE = """
import resource, torch, irblocks
applied = irblocks.keep_freed_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 << 20, dtype=torch.uint8)
    t.fill_(1)                   # touch every page
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# torch allocates with posix_memalign, whose freed blocks glibc 2.36 reuses only once the heap
# holds ~8 of them (measured: faults 16,427, 0, 16,384 x 7, then 0 from the tenth on)
steady = [faults() for _ in range(30)][-5:]
print(applied, max(steady), min(steady))
"""


def _probe(**env: str) -> tuple[bool, int, int]:
    """(applied, most and fewest page faults of a 64 MiB tensor in the steady state)."""
    full = {k: v for k, v in os.environ.items()
            if k not in (allocator.ENV, "GLIBC_TUNABLES")} | env
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=120, env=full)
    assert r.returncode == 0, r.stderr
    applied, most, least = r.stdout.split()
    return applied == "True", int(most), int(least)


def _thp_always() -> bool:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return p.exists() and "[always]" in p.read_text()


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_kept_memory_reuses_a_freed_64mib_block_without_page_faults():
    applied, most, _ = _probe()
    assert applied
    assert most < PAGES_64MIB // 20, most              # measured: 0


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_system_policy_leaves_malloc_alone():
    applied, _, least = _probe(IRBLOCKS_MALLOC="system")
    assert not applied
    if not _thp_always():                  # huge pages would take 32 faults for 64 MiB
        assert least >= PAGES_64MIB * 9 // 10, least    # measured: 16,385 every time


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_users_own_glibc_tunables_win():
    applied, _, _ = _probe(GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    assert not applied


def test_off_glibc_it_reports_false(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    assert allocator.keep_freed_memory() is False          # cached: the first answer


def test_a_typo_is_one_line_naming_the_value(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(allocator.ENV, "kep")
    with pytest.raises(ValueError, match=r"\$IRBLOCKS_MALLOC must be one of \('keep', "
                                         r"'system'\), got 'kep'; did you mean 'keep'\?"):
        allocator.keep_freed_memory()
    code = main(["restore", str(tmp_path / "run"), str(tmp_path), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "IRBLOCKS_MALLOC" in err[0], err


class _Applied(Exception):
    """Raised by the spy: main() got to the policy before running the command."""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_commands_that_run_networks_keep_freed_memory(monkeypatch, command):
    def spy() -> bool:
        raise _Applied

    monkeypatch.setattr(allocator, "keep_freed_memory", spy)
    expected = command in ("train", "eval", "restore", "demo")
    assert COMMANDS[command].runs_networks is expected
    if expected:
        argv = {"train": ["train", "anyir-tiny"], "eval": ["eval", "run"],
                "restore": ["restore", "run", "in.png", "-o", "out"], "demo": ["demo"]}[command]
        with pytest.raises(_Applied):
            main(argv)
