"""Host-side operations tooling: ``atoll node``, the client of one node's agent API.

This package runs on the operator's machine; the node side lives in
:mod:`atoll.agent` (standard library only), and what both sides speak beyond
the API's JSON (the ops shell's frames, journal entries) in :mod:`atoll.wire`.
One direction of imports: :mod:`~atoll.ops.cli` (the verbs) uses
:mod:`~atoll.ops.shell` (the interactive session), which uses
:mod:`~atoll.ops.client` (the mutual-TLS HTTP client). The fleet CA is
:mod:`atoll.pki`.
"""
