"""atoll: a container-optimized, immutable host OS and the toolkit around it.

The package is laid out along the data's journey, one sub-package per stage:

    manifest -> compose -> publish -> disk -> boot -> agent -> fleet

Shared plumbing lives at the top level: :mod:`atoll.errors` (one exception
root), :mod:`atoll.process` (the single ``run()`` helper for external
programs), :mod:`atoll.progress` (one reporter interface) and
:mod:`atoll.tools` (thin typed wrappers per external tool).

``atoll.agent`` is special: it runs on the node with Debian's python3 and the
standard library only, so it imports nothing from the rest of the package.
``tests/unit/test_boundaries.py`` enforces the import directions.
"""

__version__ = "0.1.0"
