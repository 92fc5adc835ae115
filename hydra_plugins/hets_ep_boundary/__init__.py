"""Hydra instantiates sweepers only from ``hydra_plugins``: hets-ep's adaptive boundary search,
used by ``conf/hydra/sweeper/boundary.yaml``; the search itself is :mod:`hets_ep.boundary_search`.
Each round's jobs join the pre-flight's plan (:mod:`hets_ep.plan`) as they launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from hets_ep import boundary_search, plan, preflight, signals


class BoundarySweeper(Sweeper):
    """Rounds of jobs along one stress key, per condition, where P(train) crosses a level."""

    def __init__(self, axis: Optional[str] = None, low: Optional[float] = None, high: Optional[float] = None,
                 budget: Optional[int] = None, level: float = 0.5, scale: str = "linear",
                 seeds_per_round: Optional[int] = None, train_fraction: float = 0.8) -> None:
        from hets_ep.config import key_type

        self.search = boundary_search.Search(axis, low, high, budget, level, scale, seeds_per_round, train_fraction,
                                             integer=key_type(axis) is int if axis else False)
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        conditions, seeds = boundary_search.split(arguments)
        self.search.check(len(conditions), len(seeds))
        directory = Path(str(self.config.hydra.sweep.dir))
        directory.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, directory / "multirun.yaml")
        planned = plan.read(directory)

        def launch(batch: list[list[str]], first: int) -> None:
            preflight.extend(planned, batch, first,  # the round's jobs join the plan, checked
                             lambda overrides: self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                                                list(overrides)))
            self.launcher.launch(batch, initial_job_idx=first)

        return boundary_search.run(
            self.search, conditions, seeds, directory, launch=launch,
            outcome=lambda number: boundary_search.outcome(directory / str(number), self.search.train_fraction),
            stopped=lambda: signals.stop.received is not None)
