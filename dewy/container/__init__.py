"""Container mode's pieces: the replica set and its rollouts (:mod:`dewy.container.replicas`), the container
runtimes behind one interface (:mod:`dewy.container.runtimes`), the host port's proxy (:mod:`dewy.container.proxy`)
and the replicas' health checks (:mod:`dewy.container.health`). The mode's deploy steps are
:mod:`dewy.targets.container`."""
