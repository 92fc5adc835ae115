"""Where arrays live: one device, or several with the member (seed) or batch axis sharded.

With several devices (GPUs, or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) the member axis is sharded across them
when it divides evenly, else the batch axis; with one device nothing moves. The kernel is the
same program either way: XLA partitions it from the input shardings.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)


class Placement:
    def __init__(self, members: int, batch: int, eval_batch: int):
        devices = jax.devices()
        self.mesh = jax.sharding.Mesh(np.array(devices), ("d",)) if len(devices) > 1 else None
        self.axis = None
        if self.mesh is not None:
            if members % len(devices) == 0:
                self.axis = "members"
            elif batch % len(devices) == 0 and eval_batch % len(devices) == 0:
                self.axis = "batch"
            if self.axis:
                log.info("sharding the %s axis across %d devices", self.axis, len(devices))
            else:
                log.warning("%d devices, but neither the %d seeds nor the batch sizes (%d, %d) divide evenly: "
                            "running unsharded", len(devices), members, batch, eval_batch)

    def _put(self, tree, *spec):
        if self.axis is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec)))

    def members(self, tree):
        """Arrays with a leading member axis (the train state, sums)."""
        return self._put(tree, "d") if self.axis == "members" else self._put(tree)

    def batch(self, x):
        """A training batch ``(members, batch, …)``."""
        return self._put(x, *(("d",) if self.axis == "members" else (None, "d") if self.axis == "batch" else ()))

    def shared(self, x):
        """An evaluation batch ``(batch, …)``, the same for every member."""
        return self._put(x, *(("d",) if self.axis == "batch" else ()))
