"""``python -m atoll.bench`` (``make bench``): see :mod:`atoll.bench.page`."""

from atoll.bench.page import main

raise SystemExit(main())
