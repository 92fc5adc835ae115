"""The training loop: config → data, network, dt → EP updates → metrics, checkpoints, summary.

Read top to bottom: :func:`run` sets a run up (or restores it from its last checkpoint), then
loops over epochs; each epoch trains on shuffled batches with the configured estimator,
evaluates the test set with the free phase only, appends one line to ``metrics.jsonl``, saves
a checkpoint and rewrites ``summary.json``. SIGINT/SIGTERM checkpoint mid-epoch and stop with
``status: interrupted``; NaN/inf or an exploding state stops with ``status: diverged``.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from hets_ep import __version__, ep, io, seeding, stability
from hets_ep.checkpointing import Checkpoints
from hets_ep.config import Config, layer_names
from hets_ep.data import Dataset, augment, eval_batches, load_dataset, train_batches
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.models import Network
from hets_ep.timeconstants import sample_dt

log = logging.getLogger(__name__)

# Per-epoch sums kept on the device, so the training loop does not wait on every batch.
ACCUMULATORS = ("loss", "correct", "residual", "unconverged", "oscillation", "count")


def _zero_accumulators() -> dict[str, jax.Array]:
    return {**{k: jnp.zeros((), jnp.float32) for k in ACCUMULATORS},
            "max_state": jnp.zeros((), jnp.float32), "finite": jnp.ones((), bool)}


def _accumulate(acc, net: Network, params, free: ep.Relaxation, y, mask, residual_tol: float):
    """Add one batch's free-phase statistics (samples where ``mask`` is 1) to ``acc``."""
    logits = net.logits(params, free.state)
    loss = net.loss_per_sample(params, free.state, y)
    max_state = jnp.max(jnp.stack([jnp.max(jnp.abs(s)) for s in free.state]))
    return {
        "loss": acc["loss"] + jnp.sum(mask * loss),
        "correct": acc["correct"] + jnp.sum(mask * (jnp.argmax(logits, -1) == y)),
        "residual": acc["residual"] + jnp.sum(mask * free.residual),
        "unconverged": acc["unconverged"] + jnp.sum(mask * (free.residual > residual_tol)),
        "oscillation": acc["oscillation"] + jnp.sum(mask * free.oscillation),
        "count": acc["count"] + jnp.sum(mask),
        "max_state": jnp.maximum(acc["max_state"], max_state),
        "finite": acc["finite"] & jnp.all(jnp.isfinite(loss)),
    }


def make_steps(net: Network, phases: ep.Phases, tx: optax.GradientTransformation, residual_tol: float):
    """The jitted training step and evaluation step (dt is an argument, not a constant)."""

    @jax.jit
    def train_step(params, opt_state, acc, dt, x, y, key):
        est = ep.estimate(net, params, x, y, dt, phases, key)
        acc = _accumulate(acc, net, params, est.free, y, jnp.ones_like(y, jnp.float32), residual_tol)
        updates, opt_state = tx.update(est.grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc["finite"] &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        return params, opt_state, acc

    @jax.jit
    def eval_step(params, acc, dt, x, y, mask):
        free = ep.free_phase(net, params, net.drive(params, x), dt, phases)
        return _accumulate(acc, net, params, free, y, mask, residual_tol)

    return train_step, eval_step


def _summarise(acc: dict[str, jax.Array]) -> dict[str, float]:
    host = {k: float(v) for k, v in acc.items()}
    n = max(host["count"], 1.0)
    return {"loss": host["loss"] / n, "acc": host["correct"] / n, "residual": host["residual"] / n,
            "unconverged": host["unconverged"] / n, "oscillation": host["oscillation"] / n,
            "max_state": host["max_state"], "finite": bool(host["finite"])}


def _healthy(stats: dict, threshold: float) -> bool:
    return stats["finite"] and np.isfinite(stats["loss"]) and stats["max_state"] <= threshold


def evaluate(eval_step, params, dt, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
    """Free-phase loss, accuracy and relaxation diagnostics over a whole split."""
    acc = _zero_accumulators()
    for idx, valid in eval_batches(len(x), batch_size):
        mask = (np.arange(len(idx)) < valid).astype(np.float32)
        acc = eval_step(params, acc, dt, x[idx], y[idx], mask)
    return _summarise(acc)


class RunInterrupted(HetsEpError):
    """Raised after a run checkpointed and wrote ``status: interrupted`` on SIGINT/SIGTERM."""

    def __init__(self, signum: int, run_dir: Path):
        super().__init__(f"{signal.Signals(signum).name}: run checkpointed in {run_dir}; continue it with "
                         "resume=true (same hydra.run.dir) or resume=" + str(run_dir))
        self.exit_code = 128 + signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between batches."""

    def __init__(self):
        self.received: int | None = None

    def _handle(self, signum, _frame):
        self.received = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def versions() -> dict[str, str]:
    import flax

    device = jax.devices()[0]
    return {"hets_ep": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "device": f"{device.platform}:{getattr(device, 'device_kind', '')}"}


def _learning_curve(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_res) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train (free phase)")
    ax_acc.plot(epochs, [h["test_acc"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    ax_res.semilogy(epochs, [max(h["test_residual"], 1e-12) for h in history])
    ax_res.set(xlabel="epoch", ylabel="‖s_T − s_T−1‖ / ‖s_T‖", title="free-phase residual (test)")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class Run:
    """One training run writing into ``run_dir`` (see DESIGN.md, "What a run writes")."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.dir = cfg, Path(run_dir)
        self.data: Dataset = load_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.path,
                                          cfg.dataset.subset, cfg.dataset.normalize)
        self.steps_per_epoch = len(self.data.x_train) // cfg.train.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(self.data.x_train)} "
                              "training examples")
        self.net = cfg.model.build(self.data.classes)
        self.params = self.net.init(seeding.key(cfg.seed, "init"), self.data.input_shape)
        dt, self.dt_stats = sample_dt(cfg.seed, cfg.dt, self.net.state_shapes(self.data.input_shape))
        self.dt = tuple(jnp.asarray(d) for d in dt)
        self.tx = cfg.optimizer.build(self.params, self.steps_per_epoch, cfg.train.epochs)
        self.opt_state = self.tx.init(self.params)
        self.train_step, self.eval_step = make_steps(self.net, cfg.ep, self.tx, cfg.stability.residual_tol)
        self.estimator_key = seeding.key(cfg.seed, "estimator")
        self.schedule = cfg.optimizer.schedule_fn(self.steps_per_epoch, cfg.train.epochs)
        self.probe = self._make_probe() if cfg.stability.gradcheck_every else None
        self.checkpoints = Checkpoints(self.dir / "checkpoints")
        self.history: list[dict] = []
        self.epoch, self.batch = 0, 0
        self.acc = _zero_accumulators()
        self.elapsed = 0.0
        io.write_npz(self.dir / "dt.npz", **{f"layer{i}": d for i, d in enumerate(dt)})

    # -- state that a checkpoint holds -------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "acc": self.acc}

    def save(self) -> None:
        meta = {"epoch": self.epoch, "batch": self.batch, "history": self.history, "elapsed": self.elapsed}
        self.checkpoints.save(self.epoch * self.steps_per_epoch + self.batch, self._tree(), meta)

    def restore(self) -> bool:
        restored = self.checkpoints.restore_latest(self._tree())
        if restored is None:
            return False
        tree, meta = restored
        self.params, self.opt_state, self.acc = tree["params"], tree["opt_state"], tree["acc"]
        self.epoch, self.batch, self.history, self.elapsed = meta["epoch"], meta["batch"], meta["history"], \
            meta["elapsed"]
        log.info("resumed from epoch %d, batch %d", self.epoch, self.batch)
        return True

    # -- outputs -----------------------------------------------------------------------------
    def summary(self, status: str, diverged_epoch: int | None = None) -> dict:
        accs = [h["test_acc"] for h in self.history]
        st = self.cfg.stability
        stats = stability.run_statistics(accs, self.data.classes, collapse_drop=st.collapse_drop,
                                         chance_margin=st.chance_margin, jitter_window=st.jitter_window,
                                         target_acc=st.target_acc)
        stats.update(
            diverged_epoch=diverged_epoch,
            mean_test_residual=stability.mean_or_none([h["test_residual"] for h in self.history]),
            final_test_residual=self.history[-1]["test_residual"] if self.history else None,
            final_unconverged=self.history[-1]["test_unconverged"] if self.history else None,
            mean_oscillation=stability.mean_or_none([h["test_oscillation"] for h in self.history]),
        )
        best = int(np.argmax(accs)) if accs else None
        return {
            "status": status,
            "seed": self.cfg.seed,
            "epochs_completed": len(self.history),
            "epochs_planned": self.cfg.train.epochs,
            "best_test_acc": accs[best] if accs else None,
            "best_epoch": best + 1 if accs else None,
            "final_test_acc": accs[-1] if accs else None,
            "final_train_acc": self.history[-1]["train_acc"] if self.history else None,
            "stability": stats,
            "dt": self.dt_stats,
            "timings": {"total_s": self.elapsed,
                        "mean_epoch_s": stability.mean_or_none([h["epoch_time_s"] for h in self.history]),
                        "samples_per_s": stability.mean_or_none([h["samples_per_s"] for h in self.history])},
            "versions": versions(),
        }

    def write(self, status: str, diverged_epoch: int | None = None) -> dict:
        """Rewrite metrics.jsonl and summary.json; once the run stops, plot its learning curve."""
        io.write_jsonl(self.dir / "metrics.jsonl", self.history)
        summary = self.summary(status, diverged_epoch)
        io.write_json(self.dir / "summary.json", summary)
        if status != "running" and self.history:
            _learning_curve(self.dir / "plots" / "learning_curve.png", self.history)
        return summary

    # -- the loop ----------------------------------------------------------------------------
    def _make_probe(self):
        compare = ep.make_comparator(self.net, self.cfg.ep, (self.cfg.ep.estimator,)) \
            if self.cfg.ep.estimator != "bptt" else None
        n = min(self.cfg.gradcheck.batch_size, len(self.data.x_train))
        x, y = self.data.x_train[:n], self.data.y_train[:n]

        def probe(params) -> dict:
            if compare is None:
                return {}
            cosines = [v["cosine"] for v in
                       compare(params, x, y, self.dt, self.estimator_key)["estimators"][self.cfg.ep.estimator].values()]
            return {"gradcheck_min_cosine": min(cosines), "gradcheck_mean_cosine": float(np.mean(cosines))}

        return probe

    def _train_batch(self, order: list[np.ndarray]) -> None:
        cfg = self.cfg
        idx = order[self.batch]
        x = self.data.x_train[idx]
        if cfg.dataset.augment:
            x = augment(x, seeding.numpy_rng(cfg.seed, "augment", self.epoch, self.batch))
        key = jax.random.fold_in(self.estimator_key, self.epoch * self.steps_per_epoch + self.batch)
        self.params, self.opt_state, self.acc = self.train_step(
            self.params, self.opt_state, self.acc, self.dt, x, self.data.y_train[idx], key)
        self.batch += 1

    def train(self) -> dict:
        """Train to ``train.epochs``; SIGINT/SIGTERM are caught for the whole call, so the final
        writes also complete before the process reacts to them."""
        cfg = self.cfg
        if cfg.resume and self.restore() and self.epoch >= cfg.train.epochs:
            log.info("run already completed %d epochs", self.epoch)
            return self.write("completed")
        if not cfg.resume and self.checkpoints.manager.all_steps():
            raise ConfigError(f"{self.dir} already holds checkpoints; pass resume=true to continue that run")
        signals = StopSignals()
        with signals.installed():
            while self.epoch < cfg.train.epochs:
                outcome = self._epoch(signals)
                if outcome is not None:
                    return outcome
            return self.write("completed")

    def _epoch(self, signals: StopSignals) -> dict | None:
        """Train and evaluate one epoch; a summary if the run must stop here, else None."""
        cfg = self.cfg
        start = time.perf_counter()
        order = train_batches(len(self.data.x_train), cfg.train.batch_size, cfg.seed, self.epoch)
        size = cfg.train.batch_size
        with tqdm(total=self.steps_per_epoch * size, initial=self.batch * size, desc=f"epoch {self.epoch + 1}",
                  unit="sample", unit_scale=True, disable=None if cfg.train.progress else True, leave=False) as bar:
            while self.batch < self.steps_per_epoch:
                self._train_batch(order)
                bar.update(size)
                if signals.received is not None:
                    self._interrupt(signals.received, time.perf_counter() - start)
                if self.batch % cfg.train.check_every == 0 and not _healthy(_summarise(self.acc),
                                                                            cfg.train.explode_threshold):
                    break
        train = _summarise(self.acc)
        if not _healthy(train, cfg.train.explode_threshold):
            self.elapsed += time.perf_counter() - start
            log.warning("epoch %d diverged (loss %s, max |s| %.3g)", self.epoch + 1, train["loss"], train["max_state"])
            return self.write("diverged", diverged_epoch=self.epoch + 1)
        train_time = time.perf_counter() - start
        test = evaluate(self.eval_step, self.params, self.dt, self.data.x_test, self.data.y_test,
                        cfg.train.eval_batch_size)
        self._end_epoch(train, test, train_time, time.perf_counter() - start)
        if not _healthy(test, cfg.train.explode_threshold):
            return self.write("diverged", diverged_epoch=self.epoch)
        return None

    def _end_epoch(self, train: dict, test: dict, train_time: float, epoch_time: float) -> None:
        cfg = self.cfg
        step = (self.epoch + 1) * self.steps_per_epoch
        row = {
            "epoch": self.epoch + 1,
            "train_loss": train["loss"], "train_acc": train["acc"],
            "test_loss": test["loss"], "test_acc": test["acc"],
            "train_residual": train["residual"], "test_residual": test["residual"],
            "test_unconverged": test["unconverged"], "test_oscillation": test["oscillation"],
            "max_state": max(train["max_state"], test["max_state"]),
            "lr": [lr * float(self.schedule(step)) for lr in self._base_rates()],
            "epoch_time_s": epoch_time,
            "samples_per_s": self.steps_per_epoch * cfg.train.batch_size / max(train_time, 1e-9),
        }
        if self.probe is not None and (self.epoch + 1) % cfg.stability.gradcheck_every == 0:
            row.update(self.probe(self.params))
        row.update(stability.epoch_monitors([h["test_acc"] for h in self.history] + [test["acc"]],
                                            cfg.stability.collapse_drop))
        self.history.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.acc = _zero_accumulators()
        self.elapsed += epoch_time
        self.save()
        self.write("running")
        log.info("epoch %d: train acc %.4f, test acc %.4f, residual %.2e, %.0f samples/s", row["epoch"],
                 row["train_acc"], row["test_acc"], row["test_residual"], row["samples_per_s"])

    def _base_rates(self) -> list[float]:
        rates = self.cfg.optimizer.lr
        return rates * len(layer_names(self.params)) if len(rates) == 1 else list(rates)

    def _interrupt(self, signum: int, partial_time: float):
        """Checkpoint mid-epoch, write ``status: interrupted`` and raise :class:`RunInterrupted`."""
        self.elapsed += partial_time
        self.save()
        log.warning("received %s: checkpointed at epoch %d, batch %d; continue with resume=true",
                    signal.Signals(signum).name, self.epoch + 1, self.batch)
        self.write("interrupted")
        raise RunInterrupted(signum, self.dir)


def run(cfg: Config, run_dir: Path) -> dict:
    """Train one configuration into ``run_dir``; returns the summary that was written."""
    trainer = Run(cfg, run_dir)
    try:
        return trainer.train()
    finally:
        trainer.checkpoints.close()
