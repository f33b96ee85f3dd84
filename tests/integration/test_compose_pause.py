"""atoll's pause, compiled from ``pause.c`` and packed by ``atoll oci pause``: static, it
answers ``-v``, sleeps, and exits 0 when the runtime stops the sandbox (SIGTERM, SIGINT)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from atoll.errors import ToolError
from atoll.process import run, start
from tests.oci_archive import image_parts


def _pause_binary(archive: Path, into: Path) -> Path:
    _, layer = image_parts(archive)
    member = layer.extractfile("pause")
    assert member is not None
    binary = into / "pause"
    binary.write_bytes(member.read())
    binary.chmod(0o755)
    return binary


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_pause_image_holds_and_stops_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    archive = tmp_path / "pause.oci.tar"
    done = run([sys.executable, "-m", "atoll", "oci", "pause", "-o", archive])
    reference = done.stdout.decode().split()[1]
    assert reference == "localhost/atoll/pause:1"
    pause = _pause_binary(archive, tmp_path)
    assert b"ld-linux" not in pause.read_bytes()[:8192]  # static: no loader in the image
    assert run([pause, "-v"]).stdout == b"atoll-pause 1\n"
    child = start([pause])
    try:
        with pytest.raises(ToolError, match="still running"):
            child.wait(timeout=0.5)  # it holds
        child.send_signal(stop)
        assert child.wait(timeout=10) == 0
    finally:
        child.stop()
    # The same source gives the same archive (a second build compares byte for byte).
    again = tmp_path / "again.oci.tar"
    run([sys.executable, "-m", "atoll", "oci", "pause", "-o", again])
    assert again.read_bytes() == archive.read_bytes()
