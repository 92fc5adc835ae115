"""The training loop: config → data, network, dt → EP updates → metrics, checkpoints, summary.

Read top to bottom: :func:`run` sets a run up (or restores it from its last checkpoint), then
loops over epochs; each epoch trains on shuffled batches with the configured estimator,
evaluates the test set with the free phase only, appends one line to ``metrics.jsonl``, saves
a checkpoint and rewrites ``summary.json``. SIGINT/SIGTERM checkpoint mid-epoch and stop with
``status: interrupted``; NaN/inf or an exploding state stops a seed with ``status: diverged``.

Every array carries a leading *member* axis, one entry per seed (``train.parallel_seeds``,
1 by default), and the steps are ``jax.vmap``-ed over it: one code path trains one seed or
many in one program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import OmegaConf
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


def zero_accumulators(members: int) -> dict[str, jax.Array]:
    return {**{k: jnp.zeros((members,), jnp.float32) for k in ACCUMULATORS},
            "max_state": jnp.zeros((members,), jnp.float32), "finite": jnp.ones((members,), bool)}


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
    """Jitted training and evaluation steps over a leading *member* axis (one per seed).

    Every argument but ``step`` (training) or the test batch (evaluation) carries the member
    axis; ``jax.vmap`` maps the single-seed step over it, so K seeds train in one program.
    """

    def train_one(params, opt_state, acc, dt, x, y, key, step):
        est = ep.estimate(net, params, x, y, dt, phases, jax.random.fold_in(key, step))
        acc = _accumulate(acc, net, params, est.free, y, jnp.ones_like(y, jnp.float32), residual_tol)
        updates, opt_state = tx.update(est.grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc["finite"] &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        return params, opt_state, acc

    def eval_one(params, acc, dt, x, y, mask):
        free = ep.free_phase(net, params, net.drive(params, x), dt, phases)
        return _accumulate(acc, net, params, free, y, mask, residual_tol)

    train_step = jax.jit(jax.vmap(train_one, in_axes=(0, 0, 0, 0, 0, 0, 0, None)))
    eval_step = jax.jit(jax.vmap(eval_one, in_axes=(0, 0, 0, None, None, None)))
    return train_step, eval_step


def _summarise(acc: dict[str, jax.Array]) -> list[dict[str, float]]:
    """Per member: means of the accumulated sums."""
    host = jax.device_get(acc)
    out = []
    for k in range(len(host["count"])):
        n = max(float(host["count"][k]), 1.0)
        out.append({"loss": float(host["loss"][k]) / n, "acc": float(host["correct"][k]) / n,
                    "residual": float(host["residual"][k]) / n, "unconverged": float(host["unconverged"][k]) / n,
                    "oscillation": float(host["oscillation"][k]) / n, "max_state": float(host["max_state"][k]),
                    "finite": bool(host["finite"][k])})
    return out


def _healthy(stats: dict, threshold: float) -> bool:
    return stats["finite"] and np.isfinite(stats["loss"]) and stats["max_state"] <= threshold


def evaluate(eval_step, params, dt, x: np.ndarray, y: np.ndarray, batch_size: int, members: int,
             placement: "Placement") -> list[dict[str, float]]:
    """Per member: free-phase loss, accuracy and relaxation diagnostics over a whole split."""
    acc = placement.members(zero_accumulators(members))
    for idx, valid in eval_batches(len(x), batch_size):
        mask = (np.arange(len(idx)) < valid).astype(np.float32)
        acc = eval_step(params, acc, dt, placement.shared(x[idx]), placement.shared(y[idx]),
                        placement.shared(mask))
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


class Placement:
    """Where arrays live. With several devices (GPUs, or CPU devices forced with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) the member axis is sharded across
    them when it divides evenly, else the batch axis; with one device nothing moves."""

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
        """Arrays with a leading member axis (weights, optimizer state, dt, keys)."""
        return self._put(tree, "d") if self.axis == "members" else self._put(tree)

    def batch(self, x):
        """A training batch ``(members, batch, …)``."""
        return self._put(x, *(("d",) if self.axis == "members" else (None, "d") if self.axis == "batch" else ()))

    def shared(self, x):
        """An evaluation batch ``(batch, …)``, the same for every member."""
        return self._put(x, *(("d",) if self.axis == "batch" else ()))


@dataclasses.dataclass
class Member:
    """One seed of a run: its own directory, dt draw, history and status."""

    seed: int
    dir: Path
    dt_stats: dict
    history: list[dict] = dataclasses.field(default_factory=list)
    status: str = "running"
    diverged_epoch: int | None = None

    def state(self) -> dict:
        return {"history": self.history, "status": self.status, "diverged_epoch": self.diverged_epoch}


def _stack(trees: list):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(tree, k: int):
    return jax.tree.map(lambda a: a[k], tree)


class Run:
    """A training run writing into ``run_dir`` (see DESIGN.md, "What a run writes").

    With ``train.parallel_seeds=K`` it trains seeds ``seed … seed+K−1`` in one program, each
    with its own weights, dt draw and data order, and each writes ``run_dir/seed_<s>/`` exactly
    as a separate run would (including ``.hydra/config.yaml`` with its own seed); the shared
    checkpoints live in ``run_dir/checkpoints``.
    """

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.dir = cfg, Path(run_dir)
        self.data: Dataset = load_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.path,
                                          cfg.dataset.subset, cfg.dataset.normalize)
        self.steps_per_epoch = len(self.data.x_train) // cfg.train.batch_size
        if self.steps_per_epoch == 0:
            subset = f" (dataset.subset={cfg.dataset.subset})" if cfg.dataset.subset else ""
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(self.data.x_train)} "
                              f"training examples{subset}")
        k = cfg.train.parallel_seeds
        seeds = [cfg.seed + i for i in range(k)]
        dirs = [self.dir] if k == 1 else [self.dir / f"seed_{s}" for s in seeds]
        self.net = cfg.model.build(self.data.classes)
        shapes = self.net.state_shapes(self.data.input_shape)
        draws = [sample_dt(s, cfg.dt, shapes) for s in seeds]
        self.members = [Member(s, d, stats) for s, d, (_, stats) in zip(seeds, dirs, draws)]
        self.place = Placement(k, cfg.train.batch_size, cfg.train.eval_batch_size)
        params = [self.net.init(seeding.key(s, "init"), self.data.input_shape) for s in seeds]
        self.tx = cfg.optimizer.build(params[0], self.steps_per_epoch, cfg.train.epochs)
        self.params = self.place.members(_stack(params))
        self.opt_state = self.place.members(jax.vmap(self.tx.init)(self.params))
        self.dt = self.place.members(_stack([tuple(map(jnp.asarray, dt)) for dt, _ in draws]))
        self.keys = self.place.members(jnp.stack([seeding.key(s, "estimator") for s in seeds]))
        self.acc = self.place.members(zero_accumulators(k))
        self.train_step, self.eval_step = make_steps(self.net, cfg.ep, self.tx, cfg.stability.residual_tol)
        self.schedule = cfg.optimizer.schedule_fn(self.steps_per_epoch, cfg.train.epochs)
        self.probe = self._make_probe() if cfg.stability.gradcheck_every else None
        self.checkpoints = Checkpoints(self.dir / "checkpoints")
        self.epoch, self.batch, self.elapsed = 0, 0, 0.0
        for member, (dt, _) in zip(self.members, draws):
            io.write_npz(member.dir / "dt.npz", **{f"layer{i}": d for i, d in enumerate(dt)})
            if k > 1:
                own = dataclasses.replace(cfg, seed=member.seed, train=dataclasses.replace(cfg.train, parallel_seeds=1))
                io.write_text(member.dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(own)))

    @property
    def active(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if m.status == "running"]

    # -- state that a checkpoint holds -------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "acc": self.acc}

    def save(self) -> None:
        meta = {"epoch": self.epoch, "batch": self.batch, "elapsed": self.elapsed,
                "members": [m.state() for m in self.members]}
        self.checkpoints.save(self.epoch * self.steps_per_epoch + self.batch, self._tree(), meta)

    def restore(self) -> bool:
        restored = self.checkpoints.restore_latest(self._tree())
        if restored is None:
            return False
        tree, meta = restored
        self.params, self.opt_state, self.acc = tree["params"], tree["opt_state"], tree["acc"]
        self.epoch, self.batch, self.elapsed = meta["epoch"], meta["batch"], meta["elapsed"]
        for member, state in zip(self.members, meta["members"]):
            member.history, member.status, member.diverged_epoch = (state["history"], state["status"],
                                                                    state["diverged_epoch"])
        log.info("resumed from epoch %d, batch %d", self.epoch, self.batch)
        return True

    # -- outputs -----------------------------------------------------------------------------
    def summary(self, member: Member, status: str) -> dict:
        history = member.history
        accs = [h["test_acc"] for h in history]
        st = self.cfg.stability
        stats = stability.run_statistics(accs, self.data.classes, collapse_drop=st.collapse_drop,
                                         chance_margin=st.chance_margin, jitter_window=st.jitter_window,
                                         target_acc=st.target_acc)
        stats.update(
            diverged_epoch=member.diverged_epoch,
            mean_test_residual=stability.mean_or_none([h["test_residual"] for h in history]),
            final_test_residual=history[-1]["test_residual"] if history else None,
            final_unconverged=history[-1]["test_unconverged"] if history else None,
            mean_oscillation=stability.mean_or_none([h["test_oscillation"] for h in history]),
        )
        best = int(np.argmax(accs)) if accs else None
        return {
            "status": status,
            "seed": member.seed,
            "epochs_completed": len(history),
            "epochs_planned": self.cfg.train.epochs,
            "best_test_acc": accs[best] if accs else None,
            "best_epoch": best + 1 if accs else None,
            "final_test_acc": accs[-1] if accs else None,
            "final_train_acc": history[-1]["train_acc"] if history else None,
            "stability": stats,
            "dt": member.dt_stats,
            "timings": {"total_s": self.elapsed, "parallel_seeds": len(self.members),
                        "mean_epoch_s": stability.mean_or_none([h["epoch_time_s"] for h in history]),
                        "samples_per_s": stability.mean_or_none([h["samples_per_s"] for h in history])},
            "versions": versions(),
        }

    def write(self, status: str) -> list[dict]:
        """Rewrite each member's metrics.jsonl and summary.json (members that diverged keep that
        status); once a member stops, plot its learning curve."""
        summaries = []
        for member in self.members:
            own = member.status if member.status != "running" else status
            io.write_jsonl(member.dir / "metrics.jsonl", member.history)
            summaries.append(self.summary(member, own))
            io.write_json(member.dir / "summary.json", summaries[-1])
            if own != "running" and member.history:
                _learning_curve(member.dir / "plots" / "learning_curve.png", member.history)
        return summaries

    # -- the loop ----------------------------------------------------------------------------
    def _make_probe(self):
        if self.cfg.ep.estimator == "bptt":
            return lambda k: {}
        compare = ep.make_comparator(self.net, self.cfg.ep, (self.cfg.ep.estimator,))
        n = min(self.cfg.gradcheck.batch_size, len(self.data.x_train))
        x, y = self.data.x_train[:n], self.data.y_train[:n]

        def probe(k: int) -> dict:
            report = compare(_member(self.params, k), x, y, _member(self.dt, k), self.keys[k])
            cosines = [v["cosine"] for v in report["estimators"][self.cfg.ep.estimator].values()]
            return {"gradcheck_min_cosine": min(cosines), "gradcheck_mean_cosine": float(np.mean(cosines))}

        return probe

    def _train_batch(self, orders: list[list[np.ndarray]]) -> None:
        idx = np.stack([order[self.batch] for order in orders])
        x = self.data.x_train[idx]
        if self.cfg.dataset.augment:
            x = np.stack([augment(x[k], seeding.numpy_rng(m.seed, "augment", self.epoch, self.batch))
                          for k, m in enumerate(self.members)])
        step = self.epoch * self.steps_per_epoch + self.batch
        self.params, self.opt_state, self.acc = self.train_step(
            self.params, self.opt_state, self.acc, self.dt, self.place.batch(x),
            self.place.batch(self.data.y_train[idx]), self.keys, step)
        self.batch += 1

    def _mark_unhealthy(self, stats: list[dict], epoch: int) -> None:
        for k in self.active:
            if not _healthy(stats[k], self.cfg.train.explode_threshold):
                member = self.members[k]
                member.status, member.diverged_epoch = "diverged", epoch
                log.warning("seed %d diverged in epoch %d (loss %s, max |s| %.3g)", member.seed, epoch,
                            stats[k]["loss"], stats[k]["max_state"])

    def train(self) -> list[dict]:
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
                    self._mark_unhealthy(_summarise(self.acc), self.epoch + 1)
                    if not self.active:
                        break
        train = _summarise(self.acc)
        self._mark_unhealthy(train, self.epoch + 1)
        train_time = time.perf_counter() - start
        test = evaluate(self.eval_step, self.params, self.dt, self.data.x_test, self.data.y_test,
                        cfg.train.eval_batch_size, len(self.members), self.place) if self.active else []
        self._end_epoch(train, test, train_time, time.perf_counter() - start)

    def _end_epoch(self, train: list[dict], test: list[dict], train_time: float, epoch_time: float) -> None:
        cfg = self.cfg
        step = (self.epoch + 1) * self.steps_per_epoch
        lrs = [lr * float(self.schedule(step)) for lr in self._base_rates()]
        for k in self.active:
            member, tr, te = self.members[k], train[k], test[k]
            row = {
                "epoch": self.epoch + 1,
                "train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"], "test_acc": te["acc"],
                "train_residual": tr["residual"], "test_residual": te["residual"],
                "test_unconverged": te["unconverged"], "test_oscillation": te["oscillation"],
                "max_state": max(tr["max_state"], te["max_state"]), "lr": lrs, "epoch_time_s": epoch_time,
                "samples_per_s": self.steps_per_epoch * cfg.train.batch_size / max(train_time, 1e-9),
            }
            if self.probe is not None and (self.epoch + 1) % cfg.stability.gradcheck_every == 0:
                row.update(self.probe(k))
            row.update(stability.epoch_monitors([h["test_acc"] for h in member.history] + [te["acc"]],
                                                cfg.stability.collapse_drop))
            member.history.append(row)
            log.info("seed %d, epoch %d: train acc %.4f, test acc %.4f, residual %.2e, %.0f samples/s",
                     member.seed, row["epoch"], row["train_acc"], row["test_acc"], row["test_residual"],
                     row["samples_per_s"] * len(self.members))
        self._mark_unhealthy(test, self.epoch + 1)
        self.epoch, self.batch = self.epoch + 1, 0
        self.acc = self.place.members(zero_accumulators(len(self.members)))
        self.elapsed += epoch_time
        self.save()
        self.write("running")

    def _base_rates(self) -> list[float]:
        rates = self.cfg.optimizer.lr
        return rates * len(layer_names(_member(self.params, 0))) if len(rates) == 1 else list(rates)

    def _interrupt(self, signum: int, partial_time: float):
        """Checkpoint mid-epoch, write ``status: interrupted`` and raise :class:`RunInterrupted`."""
        self.elapsed += partial_time
        self.save()
        log.warning("received %s: checkpointed at epoch %d, batch %d; continue with resume=true",
                    signal.Signals(signum).name, self.epoch + 1, self.batch)
        self.write("interrupted")
        raise RunInterrupted(signum, self.dir)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (created exclusively, holding our pid) while a process trains there.

    A second process aiming at the same directory fails at once instead of interleaving its
    writes; a lock left by a killed process (its pid no longer running) is taken over.
    """
    lock = Path(run_dir) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise HetsEpError(
                f"{run_dir} is in use by process {pid}; wait for it or choose another hydra.run.dir") from None
    else:
        raise HetsEpError(f"{run_dir}: cannot take the run lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def run(cfg: Config, run_dir: Path) -> list[dict]:
    """Train one configuration into ``run_dir``; returns the summary of each seed."""
    with run_lock(run_dir):
        trainer = Run(cfg, run_dir)
        try:
            return trainer.train()
        finally:
            trainer.checkpoints.close()
