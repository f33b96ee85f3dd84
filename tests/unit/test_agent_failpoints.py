"""Failpoints: inert unless armed, fire once, recorded before they block."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from atoll.agent import failpoints


def _arm(root: Path, text: str) -> None:
    path = root / failpoints.ARMED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class PowerCut(threading.Event):
    """What a fired failpoint waits for; ``waiting`` is set once something waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_nothing_armed_nothing_happens(tmp_path: Path) -> None:
    assert failpoints.hit("upgrade:deployed", tmp_path) is False
    assert not (tmp_path / failpoints.FIRED).exists()


def test_an_armed_failpoint_fires_once_and_is_recorded_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _arm(tmp_path, "# cut the power here\nupgrade:deployed\ntrial:started\n")
    assert failpoints.armed(tmp_path) == ["upgrade:deployed", "trial:started"]
    released = PowerCut()
    fired: list[bool] = []
    worker = threading.Thread(
        target=lambda: fired.append(failpoints.hit("upgrade:deployed", tmp_path, released))
    )
    worker.start()
    assert released.waiting.wait(10)
    assert worker.is_alive() and fired == []  # blocked, waiting for the power cut
    assert (tmp_path / failpoints.FIRED).read_text() == "upgrade:deployed\n"
    assert "atoll-failpoint: upgrade:deployed" in capsys.readouterr().err
    released.set()
    worker.join(5)
    assert fired == [True]
    # The next boot gets past it; the others stay armed.
    assert failpoints.hit("upgrade:deployed", tmp_path) is False
    assert failpoints.armed(tmp_path) == ["trial:started"]
    assert failpoints.hit("update:pulled", tmp_path) is False


def test_an_unknown_name_disarms_the_file_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _arm(tmp_path, "upgrade:deploy\n")
    with pytest.raises(ValueError, match=r"unknown failpoint\(s\) \[.upgrade:deploy.\]"):
        failpoints.armed(tmp_path)
    assert failpoints.hit("upgrade:deployed", tmp_path) is False
    assert "failpoints ignored" in capsys.readouterr().err
