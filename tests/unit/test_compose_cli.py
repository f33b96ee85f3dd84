"""``atoll compose`` treats SIGTERM as Ctrl-C, so a killed compose cleans up the same way."""

from __future__ import annotations

import os
import signal

import pytest

from atoll.compose.cli import _terminate_as_interrupt


def test_sigterm_during_a_compose_is_an_interrupt_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before
