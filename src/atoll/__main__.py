"""``python -m atoll`` is the same as the ``atoll`` command."""

from atoll.cli import main

raise SystemExit(main())
