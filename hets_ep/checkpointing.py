"""Checkpoints with orbax: the train state pytree plus JSON metadata (position, history).

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-write leaves the previous checkpoints intact (leftover temporary folders are cleaned up
when the run restarts). Restoring tries the newest step first; a step that cannot be read is
moved aside to ``checkpoints.corrupt/`` with a warning and the next older one is tried.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from hets_ep.errors import HetsEpError
from hets_ep.record import RECORD_VERSION

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, directory: Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),
        )

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, tree: Any, meta: dict) -> None:
        """Save ``tree`` and ``meta`` as ``step``, replacing a checkpoint already there (a run
        interrupted during evaluation saves at the step its next epoch starts from)."""
        if step in self.manager.all_steps():
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(tree=ocp.args.StandardSave(tree),
                                                       meta=ocp.args.JsonSave({**meta, "version": RECORD_VERSION})))
        self.manager.wait_until_finished()

    def _set_aside(self, step: int) -> Path:
        target = self.directory.with_name(self.directory.name + ".corrupt") / str(step)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(self.directory / str(step)), target)
        self.manager.reload()
        return target

    def restore_latest(self, like: Any, check: Callable[[dict], None] = lambda meta: None
                       ) -> Optional[tuple[Any, dict]]:
        """``(tree, meta)`` of the newest readable step shaped like ``like``; None if there is none.
        ``check(meta)`` raises :class:`HetsEpError` for a readable checkpoint of another run
        (which is then left where it is).

        Raises :class:`HetsEpError` when checkpoints exist but none can be read: a run must
        not silently start again from scratch.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            self._check_meta(step, check)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    tree=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                return restored["tree"], restored["meta"]
            except Exception as err:  # orbax raises many types for unreadable steps
                moved = self._set_aside(step)
                log.warning("checkpoint step %d is unreadable (%s: %s); moved it to %s and trying an older one",
                            step, type(err).__name__, (str(err).splitlines() or [""])[0][:200], moved)
        if steps:
            raise HetsEpError(f"{self.directory}: none of the checkpoints (steps {steps}) can be read (moved to "
                              f"{self.directory.name}.corrupt/); move them back or away to decide how to continue")
        return None

    def _check_meta(self, step: int, check: Callable[[dict], None]) -> None:
        """Refuse (without moving anything) a readable checkpoint of another layout version, or
        one ``check`` refuses."""
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # unreadable: restore_latest sets it aside
            return
        version = meta.get("version", 1)
        if version != RECORD_VERSION:
            raise HetsEpError(f"{self.directory / str(step)}: a checkpoint of run-record version {version}; this "
                              f"hets-ep resumes version {RECORD_VERSION} only: continue the run with the hets-ep "
                              "that started it, or start a new run")
        check(meta)

    def close(self) -> None:
        self.manager.close()
