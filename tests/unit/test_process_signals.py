"""Long verbs (``atoll compose``, ``atoll cluster build``) treat SIGTERM as Ctrl-C, and
Ctrl-C as Ctrl-C even when started with SIGINT ignored, so a killed or interrupted
build cleans up the same way (:func:`atoll.process.interrupt_on_sigterm`)."""

from __future__ import annotations

import os
import signal

import pytest

from atoll.process import interrupt_on_sigterm


def test_sigterm_during_a_compose_is_an_interrupt_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigint_interrupts_a_compose_even_when_the_parent_ignored_it() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
    try:
        with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
