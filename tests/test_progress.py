"""The one progress display: whole lines off a terminal, silent when disabled."""

import io

from irblocks.progress import progress


def test_off_terminal_lines_with_rate_and_eta():
    s = io.StringIO()
    with progress(total=4, desc="restore", unit="img", stream=s, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = s.getvalue().splitlines()
    assert "\r" not in s.getvalue() and len(lines) >= 2
    assert lines[-1].startswith("restore: 100%") and "4/4" in lines[-1] and "img/s" in lines[-1]
    assert "<" in lines[1]  # elapsed<remaining (the ETA)


def test_every_and_disabled():
    s = io.StringIO()
    for _ in progress(range(10), desc="train", stream=s, interval=0, every=5):
        pass
    counts = [ln.split("|")[2].split()[0] for ln in s.getvalue().splitlines()]
    assert counts == ["0/10", "5/10", "10/10"]
    q = io.StringIO()
    for _ in progress(range(3), stream=q, enabled=False):
        pass
    assert q.getvalue() == ""


def test_short_commands_show_progress_on_a_terminal_only(capsys, monkeypatch):
    from irblocks import progress as progress_mod
    from irblocks.cli import main

    assert main(["check", "restormer-tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "restormer-tiny: ok" and captured.err == ""  # a log stays clean
    monkeypatch.setattr(progress_mod, "_is_tty", lambda stream: True)
    assert main(["check", "restormer-tiny"]) == 0
    err = capsys.readouterr().err
    assert (
        "\rcheck:" in err and "validating the recipe" in err and "building the model on meta" in err
    )
