"""Thin typed wrappers, one module per external tool, on top of :mod:`atoll.process`."""
