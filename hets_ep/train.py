"""The run lifecycle: config → data, network, dt → epochs of updates → metrics, checkpoints, summary.

Read top to bottom: :class:`Trainer` sets a run up (or restores it from its last checkpoint),
then :meth:`Trainer.fit` loops over epochs; each epoch trains on shuffled batches with
:func:`hets_ep.steps.make_train_step`, evaluates the test set with the free phase only,
appends an :class:`~hets_ep.record.EpochRow`, saves a checkpoint and rewrites the summary.
SIGINT/SIGTERM checkpoint mid-epoch and stop with ``status: interrupted``; NaN/inf or an
exploding state stops a seed with ``status: diverged``.

With ``train.parallel_seeds=K`` one trainer runs seeds ``seed … seed+K−1`` as the members of
one vmap-ed program; each member writes ``run_dir/seed_<s>/`` exactly as a separate run
would (including ``.hydra/config.yaml`` with its own seed); the shared checkpoints live in
``run_dir/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from hets_ep import atomic, ep, figures, optim, record, seeding, stability, steps
from hets_ep.checkpointing import Checkpoints
from hets_ep.config import Config
from hets_ep.data import Dataset, augment, eval_batches, load_dataset, train_batches
from hets_ep.errors import ConfigError
from hets_ep.placement import Placement
from hets_ep.runtime import RunInterrupted, StopSignals, run_lock, versions
from hets_ep.steps import Batch, TrainState
from hets_ep.timeconstants import sample_dt

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Member:
    """One seed of a run: its own directory, dt draw, epoch rows and status."""

    seed: int
    dir: Path
    dt_stats: dict
    rows: list[record.EpochRow] = dataclasses.field(default_factory=list)
    status: str = "running"
    diverged_epoch: int | None = None

    def meta(self) -> dict:
        return {"rows": [dataclasses.asdict(r) for r in self.rows], "status": self.status,
                "diverged_epoch": self.diverged_epoch}

    def load(self, meta: dict) -> None:
        self.rows = [record.EpochRow(**r) for r in meta["rows"]]
        self.status, self.diverged_epoch = meta["status"], meta["diverged_epoch"]


def _healthy(stats: dict, threshold: float) -> bool:
    return stats["finite"] and np.isfinite(stats["loss"]) and stats["max_state"] <= threshold


class Trainer:
    """A training run writing into ``run_dir`` (the layout: :mod:`hets_ep.record`)."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.dir = cfg, Path(run_dir)
        self.data: Dataset = load_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.path,
                                          cfg.dataset.subset, cfg.dataset.normalize)
        self.steps_per_epoch = len(self.data.x_train) // cfg.train.batch_size
        if self.steps_per_epoch == 0:
            subset = f" (dataset.subset={cfg.dataset.subset})" if cfg.dataset.subset else ""
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} exceeds the {len(self.data.x_train)} "
                              f"training examples{subset}")
        k = cfg.train.parallel_seeds
        seeds = [cfg.seed + i for i in range(k)]
        dirs = [self.dir] if k == 1 else [self.dir / f"seed_{s}" for s in seeds]
        self.net = cfg.model.build(self.data.classes)
        shapes = self.net.state_shapes(self.data.input_shape)
        draws = [sample_dt(s, cfg.dt, shapes) for s in seeds]
        self.members = [Member(s, d, stats) for s, d, (_, stats) in zip(seeds, dirs, draws)]
        self.place = Placement(k, cfg.train.batch_size, cfg.train.eval_batch_size)
        params = steps.stack([self.net.init(seeding.key(s, "init"), self.data.input_shape) for s in seeds])
        self.rates = optim.layer_rates(cfg.optimizer, params)
        self.tx = optim.build(cfg.optimizer, steps.member(params, 0), self.steps_per_epoch, cfg.train.epochs)
        self.state = self.place.members(TrainState(
            params=params,
            opt_state=jax.vmap(self.tx.init)(params),
            sums=steps.zero_sums(k),
            dt=steps.stack([tuple(map(jnp.asarray, dt)) for dt, _ in draws]),
            key=jnp.stack([jax.random.key_data(seeding.key(s, "estimator")) for s in seeds]),
            step=jnp.zeros((k,), jnp.int32),
        ))
        self.train_step = steps.make_train_step(self.net, cfg.ep, self.tx, cfg.stability.residual_tol)
        self.eval_step = steps.make_eval_step(self.net, cfg.ep, cfg.stability.residual_tol)
        self.schedule = optim.schedule(cfg.optimizer, self.steps_per_epoch, cfg.train.epochs)
        self.probe = self._make_probe() if cfg.stability.gradcheck_every else None
        self.checkpoints = Checkpoints(self.dir / record.CHECKPOINTS)
        self.epoch, self.batch, self.elapsed = 0, 0, 0.0
        for member, (dt, _) in zip(self.members, draws):
            atomic.write_npz(member.dir / record.DT, **{f"layer{i}": d for i, d in enumerate(dt)})
            if k > 1:
                own = dataclasses.replace(cfg, seed=member.seed, train=dataclasses.replace(cfg.train, parallel_seeds=1))
                atomic.write_text(member.dir / record.CONFIG, OmegaConf.to_yaml(OmegaConf.structured(own)))

    @property
    def active(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if m.status == "running"]

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        meta = {"epoch": self.epoch, "batch": self.batch, "elapsed": self.elapsed,
                "members": [m.meta() for m in self.members]}
        self.checkpoints.save(self.epoch * self.steps_per_epoch + self.batch, {"state": self.state}, meta)

    def restore(self) -> bool:
        restored = self.checkpoints.restore_latest({"state": self.state})
        if restored is None:
            return False
        tree, meta = restored
        self.state = self.place.members(TrainState(*tree["state"]))
        self.epoch, self.batch, self.elapsed = meta["epoch"], meta["batch"], meta["elapsed"]
        for member, state in zip(self.members, meta["members"]):
            member.load(state)
        log.info("resumed from epoch %d, batch %d", self.epoch, self.batch)
        return True

    # -- outputs -----------------------------------------------------------------------------
    def summary(self, member: Member, status: str) -> record.Summary:
        rows = member.rows
        accs = [r.test_acc for r in rows]
        st = self.cfg.stability
        stats = stability.run_statistics(accs, self.data.classes, collapse_drop=st.collapse_drop,
                                         chance_margin=st.chance_margin, jitter_window=st.jitter_window,
                                         target_acc=st.target_acc)
        stats.update(
            diverged_epoch=member.diverged_epoch,
            mean_test_residual=stability.mean_or_none([r.test_step_residual for r in rows]),
            final_test_residual=rows[-1].test_step_residual if rows else None,
            final_unconverged=rows[-1].test_unconverged if rows else None,
            mean_oscillation=stability.mean_or_none([r.test_oscillation for r in rows]),
        )
        best = int(np.argmax(accs)) if accs else None
        return record.Summary(
            status=status,
            seed=member.seed,
            epochs_completed=len(rows),
            epochs_planned=self.cfg.train.epochs,
            best_test_acc=accs[best] if accs else None,
            best_epoch=best + 1 if accs else None,
            final_test_acc=accs[-1] if accs else None,
            final_train_acc=rows[-1].train_acc if rows else None,
            stability=stats,
            dt=member.dt_stats,
            timings={"total_s": self.elapsed, "parallel_seeds": len(self.members),
                     "mean_epoch_s": stability.mean_or_none([r.epoch_time_s for r in rows]),
                     "samples_per_s": stability.mean_or_none([r.samples_per_s for r in rows])},
            versions=versions(),
        )

    def write(self, status: str) -> list[record.Summary]:
        """Rewrite each member's metrics and summary (members that diverged keep that status);
        once a member stops, plot its learning curve."""
        summaries = []
        for member in self.members:
            own = member.status if member.status != "running" else status
            record.write_rows(member.dir, member.rows)
            summaries.append(self.summary(member, own))
            record.write_summary(member.dir, summaries[-1])
            if own != "running" and member.rows:
                figures.learning_curve(member.dir / record.LEARNING_CURVE, member.rows)
        return summaries

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[record.Summary]:
        """Train to ``train.epochs``; returns each member's summary. SIGINT/SIGTERM are caught for
        the whole call, so the final writes also complete before the process reacts to them."""
        cfg = self.cfg
        if cfg.resume and self.restore() and self.epoch >= cfg.train.epochs:
            log.info("run already completed %d epochs", self.epoch)
            return self.write("completed")
        if not cfg.resume and self.checkpoints.steps():
            raise ConfigError(f"{self.dir} already holds checkpoints; pass resume=true to continue that run")
        signals = StopSignals()
        with signals.installed():
            while self.epoch < cfg.train.epochs and self.active:
                self._epoch(signals)
            return self.write("completed")

    def _epoch(self, signals: StopSignals) -> None:
        """Train and evaluate one epoch for every member still running."""
        cfg = self.cfg
        start = time.perf_counter()
        orders = [train_batches(len(self.data.x_train), cfg.train.batch_size, m.seed, self.epoch)
                  for m in self.members]
        size = cfg.train.batch_size * len(self.members)
        with tqdm(total=self.steps_per_epoch * size, initial=self.batch * size, desc=f"epoch {self.epoch + 1}",
                  unit="sample", unit_scale=True, disable=None if cfg.train.progress else True, leave=False) as bar:
            while self.batch < self.steps_per_epoch:
                self._train_batch(orders)
                bar.update(size)
                if signals.received is not None:
                    self._interrupt(signals.received, time.perf_counter() - start)
                if self.batch % cfg.train.check_every == 0:
                    self._mark_unhealthy(steps.means(self.state.sums), self.epoch + 1)
                    if not self.active:
                        break
        train = steps.means(self.state.sums)
        self._mark_unhealthy(train, self.epoch + 1)
        train_time = time.perf_counter() - start
        test = self._evaluate(self.data.x_test, self.data.y_test) if self.active else []
        self._end_epoch(train, test, train_time, time.perf_counter() - start)

    def _train_batch(self, orders: list[list[np.ndarray]]) -> None:
        idx = np.stack([order[self.batch] for order in orders])
        x = self.data.x_train[idx]
        if self.cfg.dataset.augment:
            x = np.stack([augment(x[k], seeding.numpy_rng(m.seed, "augment", self.epoch, self.batch))
                          for k, m in enumerate(self.members)])
        batch = Batch(self.place.batch(x), self.place.batch(self.data.y_train[idx]))
        self.state = self.train_step(self.state, batch)
        self.batch += 1

    def _evaluate(self, x: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
        """Per member: free-phase loss, accuracy and relaxation diagnostics over a whole split."""
        sums = self.place.members(steps.zero_sums(len(self.members)))
        for idx, valid in eval_batches(len(x), self.cfg.train.eval_batch_size):
            mask = (np.arange(len(idx)) < valid).astype(np.float32)
            sums = self.eval_step(self.state, sums, Batch(*map(self.place.shared, (x[idx], y[idx], mask))))
        return steps.means(sums)

    def _mark_unhealthy(self, stats: list[dict], epoch: int) -> None:
        for k in self.active:
            if not _healthy(stats[k], self.cfg.train.explode_threshold):
                member = self.members[k]
                member.status, member.diverged_epoch = "diverged", epoch
                log.warning("seed %d diverged in epoch %d (loss %s, max |s| %.3g)", member.seed, epoch,
                            stats[k]["loss"], stats[k]["max_state"])

    def _end_epoch(self, train: list[dict], test: list[dict], train_time: float, epoch_time: float) -> None:
        cfg = self.cfg
        step = (self.epoch + 1) * self.steps_per_epoch
        lrs = [lr * float(self.schedule(step)) for lr in self.rates]
        for k in self.active:
            member, tr, te = self.members[k], train[k], test[k]
            accs = [r.test_acc for r in member.rows] + [te["acc"]]
            row = record.EpochRow(
                epoch=self.epoch + 1,
                train_loss=tr["loss"], train_acc=tr["acc"], test_loss=te["loss"], test_acc=te["acc"],
                train_step_residual=tr["step_residual"], test_step_residual=te["step_residual"],
                test_unconverged=te["unconverged"], test_oscillation=te["oscillation"],
                max_state=max(tr["max_state"], te["max_state"]), lr=lrs, epoch_time_s=epoch_time,
                samples_per_s=self.steps_per_epoch * cfg.train.batch_size / max(train_time, 1e-9),
                **stability.epoch_monitors(accs, cfg.stability.collapse_drop),
            )
            if self.probe is not None and (self.epoch + 1) % cfg.stability.gradcheck_every == 0:
                row = dataclasses.replace(row, **self.probe(k))
            member.rows.append(row)
            log.info("seed %d, epoch %d: train acc %.4f, test acc %.4f, residual %.2e, %.0f samples/s",
                     member.seed, row.epoch, row.train_acc, row.test_acc, row.test_step_residual,
                     row.samples_per_s * len(self.members))
        self._mark_unhealthy(test, self.epoch + 1)
        self.epoch, self.batch = self.epoch + 1, 0
        self.state = self.state._replace(sums=self.place.members(steps.zero_sums(len(self.members))))
        self.elapsed += epoch_time
        self.save()
        self.write("running")

    def _make_probe(self):
        if self.cfg.ep.estimator == "bptt":
            return lambda k: {}
        compare = ep.make_comparator(self.net, self.cfg.ep, (self.cfg.ep.estimator,))
        n = min(self.cfg.gradcheck.batch_size, len(self.data.x_train))
        x, y = self.data.x_train[:n], self.data.y_train[:n]

        def probe(k: int) -> dict:
            state = steps.member(self.state, k)
            report = compare(state.params, x, y, state.dt, jax.random.wrap_key_data(state.key))
            cosines = [v["cosine"] for v in report["estimators"][self.cfg.ep.estimator].values()]
            return {"gradcheck_min_cosine": min(cosines), "gradcheck_mean_cosine": float(np.mean(cosines))}

        return probe

    def _interrupt(self, signum: int, partial_time: float):
        """Checkpoint mid-epoch, write ``status: interrupted`` and raise :class:`RunInterrupted`."""
        self.elapsed += partial_time
        self.save()
        log.warning("received %s: checkpointed at epoch %d, batch %d; continue with resume=true",
                    signal.Signals(signum).name, self.epoch + 1, self.batch)
        self.write("interrupted")
        raise RunInterrupted(signum, self.dir)


def train(cfg: Config, run_dir: Path) -> list[record.Summary]:
    """Train one configuration into ``run_dir``; returns the summary of each seed."""
    with run_lock(run_dir):
        trainer = Trainer(cfg, run_dir)
        try:
            return trainer.fit()
        finally:
            trainer.checkpoints.close()
