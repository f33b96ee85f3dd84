"""The node agent: runs on every atoll node with Debian's python3, standard library only.

It imports nothing from the rest of atoll (``tests/unit/test_boundaries.py``
enforces it); compose copies this package into the image under
``/usr/lib/atoll/python/atoll/agent``.
"""
