"""Verb ``atoll node``: operate one node through its agent's API (host side)."""

from __future__ import annotations

import argparse

from atoll.ops import client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client.register(sub)
