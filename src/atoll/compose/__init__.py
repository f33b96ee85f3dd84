"""compose: manifest -> root filesystem -> slim, ostree-shaped tree -> ostree commit.

Public surface: :func:`compose` (see :mod:`atoll.compose.pipeline`),
:func:`inspect`, and the OCI archive builder used for preloaded images.
"""

from atoll.compose.inspect import inspect
from atoll.compose.pipeline import ComposeResult, compose

__all__ = ["ComposeResult", "compose", "inspect"]
