"""Thin typed wrappers, one module per external tool, on top of :func:`atoll.process.run`."""
