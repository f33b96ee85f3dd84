"""publish: signed update channels, static deltas, and a plain HTTP server.

See :mod:`atoll.publish.publish` for the flow and docs/updates.md for the
served layout; the node's half is :mod:`atoll.agent.verify` and
:mod:`atoll.agent.fetch` (standard library only).
"""
