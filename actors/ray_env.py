"""Starting or joining Ray, on loopback when local.

Ray binds to a non-loopback address by default; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps a local
cluster on 127.0.0.1, and ``RAY_AUTH_MODE=disabled`` stops it writing ``~/.ray/auth_token`` for a local
run (../shared/STACK.md).  Both are set here, the one place that reads or writes Ray's environment.
"""

from __future__ import annotations

import logging
import os

from clustergnn.config import ClusterConfig

log = logging.getLogger(__name__)

LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(cfg: ClusterConfig) -> bool:
    """Join ``cfg.ray_address`` or start a local Ray on 127.0.0.1; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, log_to_driver=False)
        return False
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    # Ray nices its workers to 15: on a busy machine the driver, the broker and the load (at 0) then starve
    # the owners (cluster.owner_niceness); workers inherit this from the raylet this call starts
    os.environ.setdefault("RAY_worker_niceness", str(cfg.owner_niceness))
    # more logical CPUs than cores: P owners at fractional CPUs plus reads never starve each other
    num_cpus = cfg.ray_num_cpus or max(4, (os.cpu_count() or 2) * 2)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    log.info("local Ray started on 127.0.0.1 with %s logical CPUs", num_cpus)
    return True
