"""The node agent: runs on every atoll node with Debian's python3, standard library only.

Of the rest of atoll it imports only :mod:`atoll.wire` (the formats it shares
with the host) and :mod:`atoll.durable`, and nothing of atoll imports it
(``tests/unit/test_boundaries.py`` enforces both); compose copies this package
and those two into the image under ``/usr/lib/atoll/python/atoll/``
(:func:`atoll.compose.customize.install_agent`).
"""
