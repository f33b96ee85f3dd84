"""atoll: a container-optimized, immutable host OS and the toolkit around it.

The package is laid out along the data's journey, one sub-package per stage:

    manifest -> compose -> publish -> disk -> boot -> agent -> fleet

Shared plumbing lives at the top level: :mod:`atoll.errors` (one exception
root), :mod:`atoll.process` (the one way to run external programs on the
host: ``run()`` and ``start()``), :mod:`atoll.progress` (one reporter interface),
:mod:`atoll.durable` (atomic, durable file writes) and :mod:`atoll.tools`
(thin typed wrappers per external tool).

``atoll.agent`` is special: it runs on the node with Debian's python3 and the
standard library only, so it imports nothing from the rest of the package but
:mod:`atoll.wire` (the formats both sides speak) and :mod:`atoll.durable`,
which the image ships beside it; no host code imports the agent.
``tests/unit/test_boundaries.py`` enforces the import directions.
"""

__version__ = "0.1.0"
