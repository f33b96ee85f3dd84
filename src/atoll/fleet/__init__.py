"""atoll fleet: roll OS versions across a pool of nodes the way Kubernetes rolls pods.

* :mod:`atoll.fleet.rollout` is the pure planner (facts in, actions out, no I/O);
* :mod:`atoll.fleet.transitions` holds the pure rules for what facts and decisions
  do to stored nodes and pools, which every store applies;
* :mod:`atoll.fleet.store` is the store protocol the controller uses;
  :mod:`atoll.fleet.sqlite_store` persists pools, nodes and events in SQLite, and
  :mod:`atoll.fleet.etcd_store` in etcd for several controller replicas;
* :mod:`atoll.fleet.server` is the HTTP controller the node agents talk to
  (the protocol's typed messages and client are :mod:`atoll.wire.fleet`,
  standard library only, which the agent uses too);
* :mod:`atoll.fleet.cli` adds the ``atoll fleet`` verbs.

The rules are documented in ``docs/fleet.md``.
"""
