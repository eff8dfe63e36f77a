"""Fleet-safe rollouts: the hosts of one app deploy a new release canary first, then in waves.

``policy.py`` is the rollout policy (``--rollout``, the ``[rollout]`` table), ``plan.py`` the
decisions (who may deploy now: a pure function of the shared state and the time),
``stores.py`` that state in Redis or Consul (optimistic transactions), ``coordinator.py`` one
host's side (heartbeat, the gate the daemon asks, its reports) and ``status.py``
``dewy fleet status``. Only ``policy.py`` is imported without ``--rollout``.
"""
