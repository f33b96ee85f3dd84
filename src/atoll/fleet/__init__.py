"""atoll fleet: roll OS versions across a pool of nodes the way Kubernetes rolls pods.

* :mod:`atoll.fleet.rollout` is the pure planner (facts in, actions out, no I/O);
* :mod:`atoll.fleet.store` persists pools, nodes and events in SQLite, and
  :mod:`atoll.fleet.etcd_store` in etcd for several controller replicas;
* :mod:`atoll.fleet.server` is the HTTP controller the node agents talk to
  (the agent side is :mod:`atoll.agent.fleet_client`, standard library only);
* :mod:`atoll.fleet.cli` adds the ``atoll fleet`` verbs.

The rules are documented in ``docs/fleet.md``.
"""
