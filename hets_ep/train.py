"""The run lifecycle: config → data, network, dt → epochs of updates → metrics, checkpoints, summary.

Read top to bottom: :class:`Trainer` sets a run up, :meth:`Trainer.fit` restores it from its
last checkpoint if asked and loops over epochs; each epoch trains on shuffled batches with
:func:`hets_ep.steps.make_train_step`, evaluates the validation split (if any) and the test set
with the free phase only, measures the spectral radius of the relaxation step on a fixed test
batch, appends an :class:`~hets_ep.record.EpochRow`, saves a checkpoint and rewrites the summary
(:func:`hets_ep.record.summarize`). SIGINT/SIGTERM, at any moment, checkpoint at the next batch
(of training or evaluation) and stop with ``status: interrupted``; NaN/inf or an exploding state
stops a seed with ``status: diverged``.

With ``train.parallel_seeds=K`` one trainer runs seeds ``seed … seed+K−1`` as the members of
one vmap-ed program; each member writes ``run_dir/seed_<s>/`` exactly as a separate run
would (including ``.hydra/config.yaml`` with its own seed); the shared checkpoints live in
``run_dir/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from hets_ep import atomic, lock, loggers, plotting, provenance, record, resume, seeding, signals, stability, steps
from hets_ep.build import build_run
from hets_ep.checkpointing import Checkpoints
from hets_ep.config import Config
from hets_ep.data import augment, train_batches
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.placement import Placement
from hets_ep.record import Status
from hets_ep.signals import RunInterrupted
from hets_ep.steps import Batch
from hets_ep.timeconstants import permute

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Member:
    """One seed of a run: its directory, training and validation examples, dt draw, rows, status."""

    seed: int
    cfg: Config            # this member's own config (its seed, dt, β, learning-rate scale)
    dir: Path
    train_index: np.ndarray
    val_index: np.ndarray
    dt: tuple[np.ndarray, ...]
    dt_stats: dict
    rows: list[record.EpochRow] = dataclasses.field(default_factory=list)
    status: str = Status.RUNNING
    diverged_epoch: int | None = None
    stop_reason: str | None = None

    def meta(self) -> dict:
        return {"rows": [dataclasses.asdict(r) for r in self.rows], "status": str(self.status),
                "diverged_epoch": self.diverged_epoch, "stop_reason": self.stop_reason}

    def load(self, meta: dict) -> None:
        self.rows = [record.EpochRow(**r) for r in meta["rows"]]
        self.status, self.diverged_epoch = Status(meta["status"]), meta["diverged_epoch"]
        self.stop_reason = meta.get("stop_reason")


class Trainer:
    """A training run writing into ``run_dir`` (the layout: :mod:`hets_ep.record`). Building
    one writes nothing; :meth:`fit` does."""

    def __init__(self, cfg: Config, run_dir: Path, name: str = "",
                 stacked: list[tuple[Config, Path, str]] | None = None, dts: list | None = None):
        """``stacked``: the jobs of a stacked sweep trained as this run's members, each a config that
        differs from ``cfg`` only in keys held per member (seed, dt, β, learning-rate scale), its
        own run directory and its job's label (the shared checkpoints stay in ``run_dir``, the
        first job's). ``dts``: each member's dt draw, made by the command line's checks (else
        drawn here: :func:`hets_ep.build.build_run`)."""
        self.cfg, self.dir, self.stacked = cfg, Path(run_dir), bool(stacked)
        run = build_run(cfg, members=[c for c, _, _ in stacked] if stacked else None, dts=dts)
        self.data, self.net, self.steps_per_epoch = run.data, run.net, run.steps_per_epoch
        self.rates, self.tx, self.schedule = run.rates, run.tx, run.schedule
        dirs = [d for _, d, _ in stacked] if stacked else [self.dir] if len(run.seeds) == 1 else \
            [self.dir / f"seed_{s}" for s in run.seeds]
        self.names = [label for _, _, label in stacked] if stacked else [name] * len(run.seeds)
        configs = [c for c, _, _ in stacked] if stacked else [dataclasses.replace(cfg, seed=s) for s in run.seeds]
        self.members = [Member(s, c, dr, tr, va, dt, stats)
                        for s, c, dr, (tr, va), (dt, stats) in zip(run.seeds, configs, dirs, run.splits, run.dts)]
        self.place = Placement(len(run.seeds), cfg.train.batch_size, cfg.train.eval_batch_size)
        self.state, self.hyper = self.place.members(run.state), self.place.members(run.hyper)
        d = cfg.dataset
        redraw = functools.partial(permute, per=cfg.dt.per) if cfg.dt.redraw == "batch" else None
        tol, dynamics = cfg.stability.residual_tol, run.cfg.dynamics  # its backend resolved
        self.train_step = steps.make_train_step(self.net, cfg.ep, dynamics, self.tx, cfg.stability, redraw)
        self.eval_step = steps.make_eval_step(self.net, cfg.ep, dynamics, tol)
        self.val_step = steps.make_eval_step(self.net, cfg.ep, dynamics, tol, shared=False) if d.val_size else None
        self.spectral = (steps.make_spectral_probe(self.net, cfg.ep, dynamics, cfg.stability.spectral_iters)
                         if cfg.stability.spectral_iters else None)
        self.probes = None   # the EP-vs-BPTT probe at each β the members train with
        if cfg.stability.gradcheck_every and cfg.ep.estimator != "bptt":
            at = {b: dataclasses.replace(run.cfg, ep=dataclasses.replace(run.cfg.ep, beta=b))
                  for b in {m.cfg.ep.beta for m in self.members}}
            n = cfg.gradcheck.batch_size
            self.probes = {b: steps.make_gradient_probe(self.net, c.ep, c.dynamics, self.data.x_train[:n],
                                                        self.data.y_train[:n]) for b, c in at.items()}
        self.checkpoints: Checkpoints | None = None
        self.epoch, self.batch, self.elapsed = 0, 0, 0.0
        self.trackers = loggers.Trackers([])

    @property
    def active(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if m.status == Status.RUNNING]

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        meta = {"epoch": self.epoch, "batch": self.batch, "elapsed": self.elapsed,
                "members": [m.meta() for m in self.members]}
        self.checkpoints.save(self.epoch * self.steps_per_epoch + self.batch, {"state": self.state}, meta)

    def restore(self) -> bool:
        def same_members(meta: dict) -> None:
            held = len(meta["members"])
            if held != len(self.members):
                raise HetsEpError(f"{self.dir / record.CHECKPOINTS}: its checkpoints hold {held} members and this run "
                                  f"has {len(self.members)}: a stacked sweep resumes with the jobs and "
                                  "hydra.launcher.max_members it started with")

        restored = self.checkpoints.restore_latest({"state": self.state}, same_members)
        if restored is None:
            return False
        tree, meta = restored
        self.state = self.place.members(steps.TrainState(*tree["state"]))
        self.epoch, self.batch, self.elapsed = meta["epoch"], meta["batch"], meta["elapsed"]
        for member, state in zip(self.members, meta["members"]):
            member.load(state)
        where = f"after epoch {self.epoch}" if self.batch == 0 else \
            f"in epoch {self.epoch + 1} after batch {self.batch} of {self.steps_per_epoch}"
        log.info("resumed %s", where)
        return True

    # -- outputs -----------------------------------------------------------------------------
    def write(self, status: Status) -> list[record.Summary]:
        """Rewrite each member's metrics and summary (members that diverged keep that status);
        once a member stops, plot its learning curve."""
        summaries = []
        for member in self.members:
            own = member.status if member.status != Status.RUNNING else status
            record.write_rows(member.dir, member.rows)
            timings = {"total_s": self.elapsed, "parallel_seeds": len(self.members),
                       "mean_epoch_s": stability.mean_or_none([r.epoch_time_s for r in member.rows]),
                       "samples_per_s": stability.mean_or_none([r.samples_per_s for r in member.rows])}
            summaries.append(record.summarize(member.rows, own, member.seed, member.cfg, self.data.classes,
                                              dt=member.dt_stats, timings=timings, versions=provenance.versions(),
                                              runtime=provenance.job(), diverged_epoch=member.diverged_epoch,
                                              stop_reason=member.stop_reason))
            record.write_summary(member.dir, summaries[-1])
            if own != Status.RUNNING and member.rows:
                plotting.learning_curve(member.dir / record.LEARNING_CURVE, member.rows)
        return summaries

    def _finish(self, summaries: list[record.Summary]) -> list[record.Summary]:
        for k, summary in enumerate(summaries):
            self.trackers.send(k, "finish", summary)
        return summaries

    def _write_setup(self) -> None:
        """What a run records before its first epoch: each member's dt draw and its config (for
        parallel seeds each member's own: its seed, one member, as a separate run would hold;
        for one seed the config Hydra saved, or this one when trained from Python)."""
        for member in self.members:
            atomic.write_npz(member.dir / record.DT, **{f"layer{i}": d for i, d in enumerate(member.dt)})
            if (len(self.members) > 1 and not self.stacked) or not (member.dir / record.CONFIG).exists():
                own = dataclasses.replace(member.cfg, resume=False,
                                          train=dataclasses.replace(member.cfg.train, parallel_seeds=1))
                atomic.write_text(member.dir / record.CONFIG, OmegaConf.to_yaml(OmegaConf.structured(own)))

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[record.Summary]:
        """Train to ``train.epochs``; returns each member's summary. SIGINT/SIGTERM are caught for
        the whole call, so the final writes also complete before the process reacts to them."""
        cfg = self.cfg
        loggers.check_available(cfg.logger)
        with signals.stop.installed():
            self.checkpoints = Checkpoints(self.dir / record.CHECKPOINTS)
            if resume.wanted(cfg, self.dir):
                if not self.restore():
                    log.warning("resume: no checkpoint in %s; starting from scratch", self.dir / record.CHECKPOINTS)
                elif self.epoch >= cfg.train.epochs:
                    log.info("run already completed %d epochs", self.epoch)
                    return self.write(Status.COMPLETED)
            elif self.checkpoints.steps():
                raise ConfigError(f"{self.dir} already holds checkpoints; pass resume=true to continue that run")
            self._write_setup()
            self.trackers = loggers.Trackers([loggers.build(m.cfg, m.dir, m.seed, m.dt) for m in self.members])
            self._check_stop(time.perf_counter())
            while self.epoch < cfg.train.epochs and self.active:
                self._epoch()
            return self._finish(self.write(Status.COMPLETED))

    def _epoch(self) -> None:
        """Train and evaluate one epoch for every member still running."""
        cfg = self.cfg
        start = time.perf_counter()
        orders = [train_batches(len(m.train_index), cfg.train.batch_size, m.seed, self.epoch) for m in self.members]
        size = cfg.train.batch_size * len(self.members)
        with tqdm(total=self.steps_per_epoch * size, initial=self.batch * size, desc=f"epoch {self.epoch + 1}",
                  unit="sample", unit_scale=True, disable=None if cfg.train.progress else True, leave=False) as bar:
            while self.batch < self.steps_per_epoch:
                self._train_batch(orders)
                bar.update(size)
                self._check_stop(start)
                if self.batch % cfg.train.check_every == 0:
                    self._mark_unhealthy(steps.means(self.state.sums), self.epoch + 1)
                    if not self.active:
                        break
        train = steps.means(self.state.sums)
        self._mark_unhealthy(train, self.epoch + 1)
        train_time = time.perf_counter() - start
        between = functools.partial(self._check_stop, start)
        val = test = spectral = None
        if self.active:
            if self.val_step is not None:
                val = steps.means(steps.evaluate(self.val_step, self.state, self._zero_sums(), steps.member_batches(
                    self.data.x_train, self.data.y_train, [m.val_index for m in self.members],
                    cfg.train.eval_batch_size, self.place.batch), between))
            test = steps.means(steps.evaluate(self.eval_step, self.state, self._zero_sums(), steps.host_batches(
                self.data.x_test, self.data.y_test, cfg.train.eval_batch_size, self.place.shared), between))
            if self.spectral is not None:
                probe = self.place.shared(self.data.x_test[:cfg.stability.spectral_batch])
                spectral = np.asarray(self.spectral(self.state, probe))
        self._end_epoch(train, val, test, spectral, train_time, time.perf_counter() - start)

    def _zero_sums(self) -> steps.Sums:
        return self.place.members(steps.zero_sums(len(self.members)))

    def _train_batch(self, orders: list[list[np.ndarray]]) -> None:
        idx = np.stack([m.train_index[order[self.batch]] for m, order in zip(self.members, orders)])
        x = self.data.x_train[idx]
        if self.cfg.dataset.augment:
            x = np.stack([augment(x[k], seeding.numpy_rng(m.seed, "augment", self.epoch, self.batch))
                          for k, m in enumerate(self.members)])
        self.state = self.train_step(self.state, Batch(self.place.batch(x), self.place.batch(self.data.y_train[idx])),
                                     self.hyper)
        self.batch += 1

    def _mark_unhealthy(self, stats: list[steps.Means], epoch: int) -> None:
        for k in self.active:
            s = stats[k]
            if not (s.finite and np.isfinite(s.loss) and s.max_state <= self.cfg.train.explode_threshold):
                member = self.members[k]
                member.status, member.diverged_epoch = Status.DIVERGED, epoch
                log.warning("seed %d diverged in epoch %d (loss %s, max |s| %.3g)", member.seed, epoch, s.loss,
                            s.max_state)

    def _end_epoch(self, train: list[steps.Means], val: list[steps.Means] | None, test: list[steps.Means] | None,
                   spectral: np.ndarray | None, train_time: float, epoch_time: float) -> None:
        cfg = self.cfg
        step = (self.epoch + 1) * self.steps_per_epoch
        multiplier = float(self.schedule(step))
        nudged, tol = cfg.ep.estimator != "bptt", cfg.ep.tol is not None
        for k in self.active:
            member, tr, te, va = self.members[k], train[k], test[k], val[k] if val else None
            watched = [getattr(r, f"{cfg.monitor}_acc") for r in member.rows] + [(va if cfg.monitor == "val" else
                                                                                  te).acc]
            row = epoch_row(self.epoch + 1, tr, te, va, nudged=nudged, tol=tol, spectral=steps.spectral_summary(spectral, k),
                            lr=[lr * multiplier for lr in self.rates[k]], epoch_time_s=epoch_time,
                            samples_per_s=self.steps_per_epoch * cfg.train.batch_size / max(train_time, 1e-9),
                            monitors=stability.epoch_monitors(watched, cfg.stability.collapse_drop))
            if self.probes is not None and (self.epoch + 1) % cfg.stability.gradcheck_every == 0:
                row = dataclasses.replace(row, **self.probes[member.cfg.ep.beta](steps.member(self.state, k)))
            member.rows.append(row)
            self.trackers.send(k, "epoch", row)
            log.info("%sseed %d, epoch %d: train acc %.4f, %stest acc %.4f, fixed-point residual %.2e, %.0f samples/s",
                     f"{self.names[k]}: " if self.names[k] else "", member.seed, row.epoch, row.train_acc,
                     f"val acc {row.val_acc:.4f}, " if va else "", row.test_acc, row.test_fp_residual,
                     row.samples_per_s * len(self.members))
        if test:
            self._mark_unhealthy(test, self.epoch + 1)
        if cfg.train.stop_on_collapse:
            self._stop_at_chance()
        self.epoch, self.batch = self.epoch + 1, 0
        self.state = self.state._replace(sums=self._zero_sums())
        self.elapsed += epoch_time
        self.save()
        self.write(Status.RUNNING)

    def _stop_at_chance(self) -> None:
        """``train.stop_on_collapse``: end every member whose monitored accuracy has stayed at
        chance for ``train.collapse_patience`` epochs (status stopped, with the reason)."""
        cfg = self.cfg
        for k in self.active:
            member = self.members[k]
            reason = stability.at_chance([getattr(r, f"{cfg.monitor}_acc") for r in member.rows], self.data.classes,
                                         cfg.stability.chance_margin, cfg.train.collapse_patience)
            if reason is not None:
                member.status, member.stop_reason = Status.STOPPED, f"{reason}, after epoch {len(member.rows)}"
                log.info("%sseed %d stopped: %s", f"{self.names[k]}: " if self.names[k] else "", member.seed,
                         member.stop_reason)

    def _check_stop(self, start: float) -> None:
        """On SIGINT/SIGTERM: checkpoint where the run stands, write ``status: interrupted`` and
        raise :class:`RunInterrupted`. Between evaluation batches the checkpoint holds the
        finished training of the epoch, so a resumed run evaluates it again, exactly."""
        signum = signals.stop.received
        if signum is None:
            return
        self.elapsed += time.perf_counter() - start
        self.save()
        log.warning("received %s: checkpointed in epoch %d after batch %d of %d", signal.Signals(signum).name,
                    self.epoch + 1, self.batch, self.steps_per_epoch)
        self._finish(self.write(Status.INTERRUPTED))
        raise RunInterrupted(signum, self.dir)


def train(cfg: Config, run_dir: Path, name: str = "", stacked: list[tuple[Config, Path, str]] | None = None,
          dts: list | None = None) -> list[record.Summary]:
    """Train one configuration into ``run_dir`` (with ``stacked``, a stacked sweep's jobs as its
    members: :class:`Trainer`); returns the summary of each member. ``name`` prefixes its log
    lines (a sweep's job names its condition)."""
    with lock.run_lock(run_dir):
        trainer = Trainer(cfg, run_dir, name, stacked, dts)
        try:
            return trainer.fit()
        finally:
            if trainer.checkpoints is not None:
                trainer.checkpoints.close()


def epoch_row(epoch: int, train: steps.Means, test: steps.Means, val: steps.Means | None, *, nudged: bool, tol: bool,
              spectral: tuple[float, float] | None, lr: list[float], epoch_time_s: float, samples_per_s: float,
              monitors: dict) -> record.EpochRow:
    """The one mapping from an epoch's measured :class:`~hets_ep.steps.Means` to its
    :class:`~hets_ep.record.EpochRow` (``nudged``: an EP estimator, whose nudged phases have
    statistics; ``tol``: relaxation to a tolerance, which can stop at its cap)."""
    return record.EpochRow(
        epoch=epoch, train_loss=train.loss, train_acc=train.acc, train_fp_residual=train.fp_residual,
        train_unconverged=train.unconverged, train_step_residual=train.step_residual,
        train_free_steps=train.free_steps, train_free_steps_max=train.free_steps_max,
        train_relaxation_steps=train.relaxation_steps,
        test_loss=test.loss, test_acc=test.acc, test_fp_residual=test.fp_residual, test_unconverged=test.unconverged,
        test_step_residual=test.step_residual, test_oscillation=test.oscillation, test_free_steps=test.free_steps,
        val_loss=val.loss if val else None, val_acc=val.acc if val else None,
        train_nudged_fp_residual=train.nudged_fp_residual if nudged else None,
        train_nudged_unconverged=train.nudged_unconverged if nudged else None,
        train_nudged_steps=train.nudged_steps if nudged else None,
        train_nudged_steps_max=train.nudged_steps_max if nudged else None,
        train_capped=train.capped if tol else None, train_loss_spikes=int(train.loss_spikes),
        spectral_radius=spectral[0] if spectral else None, spectral_radius_max=spectral[1] if spectral else None,
        max_state=max(train.max_state, test.max_state), lr=lr, epoch_time_s=epoch_time_s,
        samples_per_s=samples_per_s, **monitors)
