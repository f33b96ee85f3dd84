"""publish: signed update channels, static deltas, and a plain HTTP server.

See :mod:`atoll.publish.publish` for the flow and docs/updates.md for the
served layout. The formats (channel documents, commit signatures, key ids)
are :mod:`atoll.wire.channel`'s, which the node verifies with; the node's
half of an update is :mod:`atoll.agent.fetch`.
"""
