"""Checkpoints with orbax: arrays (weights, optimizer state, accumulators) plus JSON metadata.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-write leaves the previous checkpoints intact. Restoring tries the newest step first and
falls back to older ones, with a warning, if a step cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from hets_ep.errors import HetsEpError

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, directory: Path, keep: int = 3):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False),
        )

    def save(self, step: int, tree: Any, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(tree=ocp.args.StandardSave(tree),
                                                       meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore_latest(self, like: Any) -> Optional[tuple[Any, dict]]:
        """``(tree, meta)`` of the newest readable step shaped like ``like``; None if there is none.

        Raises :class:`HetsEpError` when checkpoints exist but none can be read: a run must
        not silently start again from scratch.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    tree=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                return restored["tree"], restored["meta"]
            except Exception as err:  # orbax raises many types for unreadable steps
                log.warning("checkpoint step %d is unreadable (%s: %s); trying an older one",
                            step, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        if steps:
            raise HetsEpError(f"{self.manager.directory}: none of the checkpoints (steps {steps}) can be read; "
                              "move the folder away to start the run afresh")
        return None

    def close(self) -> None:
        self.manager.close()
