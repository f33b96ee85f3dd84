"""Host-side operations tooling: the ``atoll node`` client of the agent API.

This package runs on the operator's machine; the node side lives in
:mod:`atoll.agent` (standard library only). The fleet CA is :mod:`atoll.pki`.
"""
