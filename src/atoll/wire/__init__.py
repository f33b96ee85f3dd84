"""The formats both sides speak: the host's stages and the node's agent.

Each module owns one format, and is the only place that writes or reads it:

* :mod:`~atoll.wire.gvariant` and :mod:`~atoll.wire.ed25519`: the GVariant
  subset and the Ed25519 verification that ostree's commit signatures need;
* :mod:`~atoll.wire.channel`: signed channel documents, commit signatures,
  trusted keys and key ids, version comparison (``atoll publish`` writes them,
  the agent verifies them);
* :mod:`~atoll.wire.userdata`: first-boot user data (``atoll disk`` and the
  config drive validate it, the agent's first boot applies it);
* :mod:`~atoll.wire.bootentry`: boot loader entries and the ESP's layout
  (``atoll disk`` writes the first ESP, the agent keeps it in step);
* :mod:`~atoll.wire.shellframe`: the frames of the ops shell (``atoll node
  shell`` and the agent's session relay);
* :mod:`~atoll.wire.logentry`: one journal entry of ``GET /v1/logs``;
* :mod:`~atoll.wire.imagelist`: the lists of container image archives in an
  image (``atoll compose`` writes them, the preload script and the agent's ops
  shell read them);
* :mod:`~atoll.wire.fleet`: the fleet protocol as typed messages, and the
  HTTP client of the controller (the agent, the fleet CLI, benchmarks, demo).

Standard library only, and nothing outside this package but
:mod:`atoll.durable` (itself standard library only; ``bootentry`` writes the
ESP's files with it): the agent runs on the node with Debian's python3 and
ships both beside itself (``compose.customize.install_agent``). ``tests/unit/test_boundaries.py``
enforces it.
"""
