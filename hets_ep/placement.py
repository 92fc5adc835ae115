"""Where arrays live: one device, or several with the member (seed) or batch axis sharded.

With several devices the member axis is sharded across them when it divides evenly (members
are independent: no communication, the same numbers as separate runs); on accelerators the
batch axis otherwise (the batch sums then cross devices, in another order). On a CPU split
into devices (``train.parallel_seeds`` does it, see :func:`hets_ep.xla.configure`)
only members are sharded: XLA's CPU collectives that batch sharding needs were seen to stall.
With one device nothing moves. The kernel is the same program either way: XLA partitions it
from the input shardings.
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
            elif devices[0].platform != "cpu" and batch % len(devices) == 0 and eval_batch % len(devices) == 0:
                self.axis = "batch"
            if self.axis:
                log.info("sharding the %s axis across %d devices", self.axis, len(devices))
            else:
                log.warning("%d %s devices, but the %d seeds do not divide evenly across them%s: running unsharded",
                            len(devices), devices[0].platform, members, "" if devices[0].platform == "cpu" else
                            f", nor the batch sizes ({batch}, {eval_batch})")

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
