"""The structured-config schema: every key a run accepts, its type, default and valid values.

**One source of defaults: this module.** Every default lives in the dataclasses below; the
YAML files under ``conf/`` hold only what an option *changes* (``conf/dt/lognormal.yaml`` sets
``dist`` and ``cv``, nothing else), and ``conf/train.yaml`` holds the defaults list and Hydra's
own settings. So ``Config()`` from Python and ``hets-ep train`` with no overrides are the same
program (``tests/test_config.py`` composes every option of every group and checks it).

Hydra composes ``conf/`` and the command line; :func:`validate` merges the result into this
schema before any work is done. **One validation style**: every check sits in the
``__post_init__`` of the dataclass that owns the key, written with :func:`_choice` or
:func:`_check`, and raises :class:`ConfigError` with one line that starts with the key. The
allowed values live in :mod:`hets_ep.choices` (``ESTIMATORS``, ``DISTRIBUTIONS``, …), a JAX-free
module the implementing modules import them from too, never copied: so the schema, and
``hets-ep report`` with it, load no JAX.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import field
from importlib import resources
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hets_ep.choices import (ACTIVATIONS, ARCHITECTURES, BACKENDS, DIAGNOSTIC_WINDOW, DISTRIBUTIONS, DT_PER,
                             DYNAMICS, EP_ESTIMATORS, ESTIMATORS, FAMILIES, HOLOMORPHIC, HOLOMORPHIC_ACTIVATIONS,
                             INTEGRATORS, LOSSES, MATCHES, NOISE_MODES, NORMALIZATIONS, OPTIMIZERS, POOLS, REDRAWS,
                             SAMPLE_MODES, SCHEDULES, UPDATE_ORDERS, n_state_layers)
from hets_ep.data.registry import NAMES as DATASETS
from hets_ep.errors import ConfigError

if typing.TYPE_CHECKING:
    from hets_ep.models import Network

# Beyond these a run would not fit in memory or time: almost surely a typo.
MAX_COUNT = 10**6
MAX_WIDTH = 2**16
MONITORS = ("auto", "val", "test")
WANDB_MODES = ("offline", "online", "disabled")


def _check(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("KEY: MESSAGE")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _choice(key: str, value: Any, choices: Sequence) -> None:
    _check(value in choices, key, f"unknown {value!r}; choose one of {', '.join(map(str, choices))}")


def _number(key: str, value: float, *, low: float = -math.inf, high: float = math.inf, strict_low: bool = False,
            strict_high: bool = False) -> None:
    """A finite number in ``[low, high]`` (``(low, …`` / ``…, high)`` when strict)."""
    above = value > low if strict_low else value >= low
    below = value < high if strict_high else value <= high
    bounds = f"{'(' if strict_low else '['}{low:g}, {high:g}{')' if strict_high else ']'}"
    _check(isinstance(value, (int, float)) and math.isfinite(value) and above and below, key,
           f"must be a finite number in {bounds}, got {value}")


def _count(key: str, value: int, low: int = 1, high: int = MAX_COUNT) -> None:
    _check(low <= value <= high, key, f"must be in [{low}, {high}], got {value}")


@dataclasses.dataclass(frozen=True)
class Roles:
    """What a key means beyond its value.

    * ``condition``: runs that differ in it are different conditions (the report groups and
      pairs runs by these keys; bookkeeping, paths and analysis thresholds are not).
    * ``resume``: a continued run may change it (``resume=…`` with a new ``train.epochs``).
    * ``evaluate``: ``hets-ep evaluate`` may change it (the dynamics measured on trained weights).
    * ``member``: the compiled training program holds it per member, as an array: jobs of a sweep
      that differ only in such keys run as one program (``hydra/launcher=stacked``,
      :mod:`hets_ep.stacked_sweep`).
    """

    condition: bool = True
    resume: bool = False
    evaluate: bool = False
    member: bool = False


def key(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **roles: bool) -> Any:
    """A schema field and its :class:`Roles` (on a section: the roles of every key in it that
    declares none). Every key goes through here: ``tests/test_config.py`` fails on one that does
    not, so a new key cannot fall through the report, resume or evaluate unnoticed."""
    return field(default=default, default_factory=factory, metadata={"roles": roles})


@dataclasses.dataclass
class DatasetConfig:
    """Which data, how much of it, and how it is split and scaled."""

    name: str = key("mnist")
    root: Optional[str] = key(None, condition=False)  # a folder with the dataset's files, read instead of the cache
    path: Optional[str] = key(None)        # dataset=npz: FILE.npz with x_train, y_train, x_test, y_test
    subset: Optional[int] = key(None)      # first N training examples (quick runs)
    test_subset: Optional[int] = key(None)  # first N test examples (quick runs)
    val_size: int = key(0)                 # training examples held out for validation, per seed (0: none)
    normalize: str = key("unit")
    augment: bool = key(False)

    def __post_init__(self):
        _choice("dataset.name", self.name, DATASETS)
        _choice("dataset.normalize", self.normalize, NORMALIZATIONS)
        _check(self.name != "npz" or bool(self.path), "dataset.path", "dataset=npz needs dataset.path=FILE.npz")
        _check(self.name == "npz" or not self.path, "dataset.path",
               f"is read only with dataset=npz (this run uses dataset={self.name}); add dataset=npz")
        for key in ("subset", "test_subset"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"dataset.{key}", f"must be >= 1 (or null for all), got {value}")
        _count("dataset.val_size", self.val_size, low=0)


@dataclasses.dataclass
class ModelConfig:
    """The network: architecture, activation, loss and dynamics (see :mod:`hets_ep.models`)."""

    arch: str = key("mlp")
    hidden: List[int] = key(factory=lambda: [512])
    channels: List[int] = key(factory=lambda: [32, 64])
    kernel: int = key(5)
    padding: int = key(0)
    pool: str = key("max")
    activation: str = key("hard_sigmoid")
    loss: str = key("mse")          # mse on the output layer, or ce through a softmax read-out
    dynamics: str = key("leaky")    # leaky: s += dt (σ(∂Φ/∂s) − s); energy: s -= dt ∂E/∂s
    skip: int = key(0)              # K ≥ 2: each state layer also joined to the one K below (MLP; 0: none)

    def __post_init__(self):
        _choice("model.arch", self.arch, ARCHITECTURES)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.loss", self.loss, LOSSES)
        _choice("model.dynamics", self.dynamics, DYNAMICS)
        _choice("model.pool", self.pool, POOLS)
        key, layers = ("model.hidden", self.hidden) if self.arch == "mlp" else ("model.channels", self.channels)
        _check(bool(layers) and min(layers) >= 1 and max(layers) <= MAX_WIDTH, key,
               f"must list at least one layer size in [1, {MAX_WIDTH}], got {list(layers)}")
        _count("model.skip", self.skip, low=0, high=MAX_WIDTH)
        if self.skip:
            _check(self.arch == "mlp", "model.skip", f"skip connections are built for model.arch=mlp (this model is "
                                                     f"{self.arch}); set model.skip=0")
            _check(self.skip >= 2, "model.skip", "1 would join each layer to the one below it again: use 2 or more "
                                                 "(0: no skip connections)")
            room = f"use 2 to {self.state_layers - 1}" if self.state_layers > 2 else "add hidden layers"
            _check(self.skip < self.state_layers, "model.skip",
                   f"{self.skip} joins no two of the model's {self.state_layers} state layers: {room}")
        _count("model.kernel", self.kernel, high=MAX_WIDTH)
        _count("model.padding", self.padding, low=0, high=MAX_WIDTH)

    def build(self, n_out: int) -> Network:
        from hets_ep.models import build_network

        return build_network(self.arch, n_out, hidden=self.hidden, channels=self.channels, kernel=self.kernel,
                             padding=self.padding, pool=self.pool, activation=self.activation, loss=self.loss,
                             dynamics=self.dynamics, skip=self.skip)

    @property
    def state_layers(self) -> int:
        return n_state_layers(self.arch, self.hidden, self.channels, self.loss)


@dataclasses.dataclass
class DtConfig:
    """Per-neuron time steps (see :mod:`hets_ep.timeconstants`)."""

    dist: str = key("scalar")
    mean: float = key(0.5)          # the value of the matched statistic (dt.match)
    cv: float = key(0.0)
    dt_min: float = key(0.01)
    dt_max: float = key(1.0)
    sample: str = key("dt")         # dt: draw dt itself; tau: draw τ and set dt ∝ 1/τ
    match: str = key("mean")        # the statistic of dt held at `mean`: mean | geomean | tau (harmonic mean) | none
    match_cv: bool = key(True)      # and reshape until the realised cv equals `cv`
    per: str = key("unit", member=False)  # conv layers: one dt per unit, or per channel (what redraw permutes)
    base: str = key("lognormal")    # layerwise: the family whose quantiles set the layers' values
    layers: Optional[List[float]] = key(None)  # layerwise: one dt per state layer, input side first
    redraw: str = key("none", member=False)  # batch: every batch, permute the draw across each layer's neurons

    def __post_init__(self):
        _choice("dt.dist", self.dist, DISTRIBUTIONS)
        _choice("dt.base", self.base, FAMILIES)
        _choice("dt.sample", self.sample, SAMPLE_MODES)
        _choice("dt.match", self.match, MATCHES)
        _choice("dt.per", self.per, DT_PER)
        _choice("dt.redraw", self.redraw, REDRAWS)
        _number("dt.dt_min", self.dt_min, low=0, strict_low=True)
        _number("dt.dt_max", self.dt_max, low=self.dt_min)
        _number("dt.mean", self.mean, low=self.dt_min, high=self.dt_max)
        _number("dt.cv", self.cv, low=0)
        _check(self.dist != "scalar" or self.cv == 0, "dt.cv",
               f"scalar dt has cv 0, got {self.cv}; pick a distribution such as dt=lognormal")
        if self.layers is not None:
            _check(self.dist == "layerwise", "dt.layers", f"sets one dt per layer, which only dt=layerwise uses "
                                                          f"(this run uses dt={self.dist})")
            _check(bool(self.layers), "dt.layers", "must list one dt per state layer")
            for value in self.layers:
                _number("dt.layers", value, low=self.dt_min, high=self.dt_max)
        _check(self.dist == "scalar" or self.cv == 0 or self.dt_min < self.mean < self.dt_max, "dt.mean",
               f"{self.mean} leaves no room for spread inside [dt_min, dt_max] = [{self.dt_min}, {self.dt_max}]")
        _check(self.redraw == "none" or (self.dist not in ("scalar", "layerwise") and self.cv > 0), "dt.redraw",
               f"{self.redraw} permutes dt across a layer's neurons, which {self.dist} dt makes equal; "
               "use a distribution with cv > 0")


@dataclasses.dataclass
class DynamicsConfig:
    """How the state relaxes (see :mod:`hets_ep.dynamics`; the energy itself is ``model.dynamics``)."""

    integrator: str = key("euler")  # euler: s += dt (T(s) − s); exact: s += (1 − e^{−dt}) (T(s) − s)
    update_order: str = key("sync")  # sync: all layers from the old state; async: even layers, then odd ones
    noise: float = key(0.0)         # σ of the state noise (0: none)
    noise_mode: str = key("step")   # step: σ on the local field each step; sde: σ√dt on the state
    noise_eval: bool = key(False)   # noise in evaluation too (training always has it when σ > 0)
    backend: str = key("scan", condition=False)  # scan | fused (a phase per kernel launch) | auto

    def __post_init__(self):
        _choice("dynamics.integrator", self.integrator, INTEGRATORS)
        _choice("dynamics.update_order", self.update_order, UPDATE_ORDERS)
        _choice("dynamics.noise_mode", self.noise_mode, NOISE_MODES)
        _choice("dynamics.backend", self.backend, BACKENDS)
        _number("dynamics.noise", self.noise, low=0)


@dataclasses.dataclass
class EPConfig:
    """Static settings of one gradient estimate (see :mod:`hets_ep.ep`)."""

    estimator: str = key("symmetric")
    beta: float = key(0.5, evaluate=True, member=True)   # |β| (holomorphic: the radius of the circle)
    N: int = key(4, evaluate=True)          # holomorphic: points on the circle
    T1: int = key(30, evaluate=True)        # free-phase steps (with tol: at most)
    T2: int = key(10, evaluate=True)        # nudged-phase steps (with tol: at most)
    tol: Optional[float] = key(None, evaluate=True)  # relax until every sample's fixed-point residual is ≤ tol
    tol_every: int = key(5, evaluate=True)  # steps between two checks of tol
    window: int = key(DIAGNOSTIC_WINDOW, condition=False)  # last steps that the oscillation count covers
    unroll: int = key(1, condition=False)   # lax.scan unroll factor (speed only; results are unchanged)

    def __post_init__(self):
        _choice("ep.estimator", self.estimator, ESTIMATORS)
        _count("ep.T1", self.T1)
        _count("ep.T2", self.T2)
        _count("ep.N", self.N, low=2, high=64)
        _count("ep.tol_every", self.tol_every)
        _count("ep.window", self.window)
        _count("ep.unroll", self.unroll, high=1024)
        if self.tol is not None:
            _number("ep.tol", self.tol, low=0, strict_low=True)
            _check(self.estimator != "bptt", "ep.tol", "BPTT differentiates a fixed number of free-phase steps; "
                                                       "unset ep.tol (ep.tol=null) for ep=bptt")
        if self.estimator != "bptt":  # BPTT does not nudge
            _number("ep.beta", self.beta, low=0, strict_low=True)


@dataclasses.dataclass
class OptimizerConfig:
    """``lr`` is one rate for all layers or one per layer, input side first (a layer's weights
    and bias share it); ``lr_scale`` multiplies every rate, so a sweep scales them together."""

    name: str = key("sgd")
    lr: Any = key(factory=lambda: [0.03])
    lr_scale: float = key(1.0, member=True)
    momentum: float = key(0.9)
    nesterov: bool = key(False)
    weight_decay: float = key(0.0)
    schedule: str = key("cosine")   # constant | cosine | step (× step_gamma every step_every epochs)
    step_every: int = key(10)
    step_gamma: float = key(0.1)

    def __post_init__(self):
        _choice("optimizer.name", self.name, OPTIMIZERS)
        _choice("optimizer.schedule", self.schedule, SCHEDULES)
        rates = list(self.lr) if isinstance(self.lr, (list, tuple)) else [self.lr]
        _check(bool(rates) and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rates),
               "optimizer.lr", f"must be a number or a list of numbers (one per layer), got {self.lr!r}")
        for rate in rates:
            _number("optimizer.lr", rate, low=0, strict_low=True)
        self.lr = [float(r) for r in rates]
        _number("optimizer.lr_scale", self.lr_scale, low=0, strict_low=True)
        _number("optimizer.weight_decay", self.weight_decay, low=0)
        _number("optimizer.momentum", self.momentum, low=0, high=1, strict_high=True)
        _count("optimizer.step_every", self.step_every)
        _number("optimizer.step_gamma", self.step_gamma, low=0, strict_low=True)


@dataclasses.dataclass
class TrainLoopConfig:
    epochs: int = key(10, resume=True)
    batch_size: int = key(32)
    eval_batch_size: int = key(1000, condition=False, evaluate=True)
    explode_threshold: float = key(1.0e3, condition=False)  # |state| above this counts as divergence
    check_every: int = key(50, condition=False, resume=True)  # batches between divergence checks
    progress: bool = key(True, condition=False, resume=True)
    parallel_seeds: int = key(1, condition=False)  # K seeds seed … seed+K−1 in one vmap-ed program
    stop_on_collapse: bool = key(False, resume=True)  # end a run at chance for collapse_patience epochs (stopped)
    collapse_patience: int = key(2, resume=True)     # … epochs in a row below chance + stability.chance_margin

    def __post_init__(self):
        for key in ("epochs", "batch_size", "eval_batch_size", "check_every", "parallel_seeds", "collapse_patience"):
            _count(f"train.{key}", getattr(self, key))
        _number("train.explode_threshold", self.explode_threshold, low=0, strict_low=True)


@dataclasses.dataclass
class StabilityConfig:
    """Thresholds of the stability statistics (see :mod:`hets_ep.stability`)."""

    collapse_drop: float = key(0.05)   # a collapse: accuracy falls this far below its running best
    chance_margin: float = key(0.05)   # never learned: best accuracy below chance + this margin
    jitter_window: int = key(5)        # std of test accuracy over the last k epochs
    late_window: int = key(3)          # the primary metric `late`: mean test accuracy over the last k epochs
    residual_tol: float = key(1.0e-2, evaluate=True)  # a sample is unconverged if its fixed-point residual exceeds this
    target_acc: float = key(0.9)       # epochs to reach this test accuracy
    spike_factor: float = key(4.0)     # a loss spike: a log batch loss this many robust SDs above the median
    spike_floor: float = key(2.0)      # … and at least this multiple of the median loss
    spike_window: int = key(50)        # … of the last this many batches
    spike_min_loss: float = key(0.01)  # … and at least this loss: a batch whose loss is tiny is no spike
    spectral_batch: int = key(64, evaluate=True)  # the spectral radius of the relaxation step: on this many test images
    spectral_iters: int = key(40, evaluate=True)  # … by this many power iterations (0: not measured)
    gradcheck_every: int = key(0)      # EP-vs-BPTT cosine on a probe batch every N epochs (0: off)
    monitor: str = key("auto")         # the split that best epoch and collapses are read on (auto: val if any)

    def __post_init__(self):
        for key in ("collapse_drop", "chance_margin", "residual_tol", "target_acc"):
            _number(f"stability.{key}", getattr(self, key), low=0, strict_low=True)
        _number("stability.spike_factor", self.spike_factor, low=0, strict_low=True)
        _number("stability.spike_floor", self.spike_floor, low=1, strict_low=True)
        _count("stability.spike_window", self.spike_window)
        _number("stability.spike_min_loss", self.spike_min_loss, low=0)
        _count("stability.spectral_batch", self.spectral_batch)
        _count("stability.spectral_iters", self.spectral_iters, low=0)
        _count("stability.jitter_window", self.jitter_window)
        _count("stability.late_window", self.late_window)
        _count("stability.gradcheck_every", self.gradcheck_every, low=0)
        _choice("stability.monitor", self.monitor, MONITORS)


@dataclasses.dataclass
class GradcheckConfig:
    batch_size: int = key(64)
    estimators: List[str] = key(factory=lambda: [e for e in EP_ESTIMATORS if e not in HOLOMORPHIC])
    gdu: bool = key(False)          # also the step-by-step check of the nudged phase against BPTT (hets_ep.gdu)

    def __post_init__(self):
        _count("gradcheck.batch_size", self.batch_size)
        for name in self.estimators:
            _choice("gradcheck.estimators", name, EP_ESTIMATORS)


@dataclasses.dataclass
class TensorBoardConfig:
    dir: Optional[str] = key(None)            # default: RUN_DIR/tensorboard


@dataclasses.dataclass
class MLflowConfig:
    tracking_uri: str = key("sqlite:///outputs/mlflow.db")   # any MLflow tracking URI (a server: http://…)
    experiment: str = key("hets-ep")


@dataclasses.dataclass
class WandbConfig:
    project: str = key("hets-ep")
    entity: Optional[str] = key(None)
    mode: str = key("offline")                # offline (sync later with `wandb sync`) | online | disabled
    dir: Optional[str] = key(None)            # default: RUN_DIR

    def __post_init__(self):
        _choice("logger.wandb.mode", self.mode, WANDB_MODES)


@dataclasses.dataclass
class LoggerConfig:
    """Experiment trackers (the ``logger`` group; none by default): see :mod:`hets_ep.loggers`."""

    tensorboard: Optional[TensorBoardConfig] = key(None)
    mlflow: Optional[MLflowConfig] = key(None)
    wandb: Optional[WandbConfig] = key(None)


@dataclasses.dataclass
class Config:
    dataset: DatasetConfig = key(factory=DatasetConfig, evaluate=True)
    model: ModelConfig = key(factory=ModelConfig)
    dt: DtConfig = key(factory=DtConfig, evaluate=True, member=True)  # the draw: per member
    dynamics: DynamicsConfig = key(factory=DynamicsConfig, evaluate=True)
    ep: EPConfig = key(factory=EPConfig)
    optimizer: OptimizerConfig = key(factory=OptimizerConfig)
    train: TrainLoopConfig = key(factory=TrainLoopConfig)
    stability: StabilityConfig = key(factory=StabilityConfig, condition=False)  # analysis thresholds
    gradcheck: GradcheckConfig = key(factory=GradcheckConfig, condition=False)
    logger: LoggerConfig = key(factory=LoggerConfig, condition=False)
    seed: int = key(0, condition=False, member=True)   # the pairing axis, not a condition
    # false | true (continue from this run directory's last checkpoint) | PATH (continue that run)
    resume: Any = key(False, condition=False, resume=True)

    def __post_init__(self):
        _check(0 <= self.seed < 2**31, "seed", f"must be in [0, 2^31), got {self.seed}")
        _check(isinstance(self.resume, (bool, str)) and self.resume != "", "resume",
               f"must be true, false or a run directory, got {self.resume!r}")
        _check(self.stability.monitor != "val" or self.dataset.val_size > 0, "stability.monitor",
               "val needs a validation split: set dataset.val_size=N")
        holomorphic = [e for e in (self.ep.estimator, *self.gradcheck.estimators) if e in HOLOMORPHIC]
        if holomorphic:
            key = "ep.estimator" if self.ep.estimator in HOLOMORPHIC else "gradcheck.estimators"
            need = f"{holomorphic[0]} EP nudges with complex β, which needs a holomorphic energy"
            _check(self.model.activation in HOLOMORPHIC_ACTIVATIONS, "model.activation",
                   f"{self.model.activation} is not holomorphic ({need}; set by {key}): use "
                   f"{' or '.join(HOLOMORPHIC_ACTIVATIONS)}")
            _check(self.model.dynamics == "leaky", "model.dynamics",
                   f"energy dynamics clip the state, which is not holomorphic ({need}; set by {key}): use "
                   "model.dynamics=leaky")
            _check(self.model.arch != "convnet" or self.model.pool == "avg", "model.pool",
                   f"max-pooling is not holomorphic ({need}; set by {key}): use model.pool=avg")
        if self.dt.layers is not None:
            _check(len(self.dt.layers) == self.model.state_layers, "dt.layers",
                   f"lists {len(self.dt.layers)} values; the model has {self.model.state_layers} state layers")

    @property
    def monitor(self) -> str:
        """The split that best epoch and collapse detection read: ``val`` or ``test``."""
        if self.stability.monitor == "auto":
            return "val" if self.dataset.val_size else "test"
        return self.stability.monitor


SCHEMA_NAME = "train_schema"


def register_schema() -> None:
    """Make :class:`Config` the base of ``train.yaml`` (its defaults list starts with it), so
    every key exists with its type and default before the groups and overrides apply."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def compose_groups(overrides: Sequence[str] = ()) -> DictConfig:
    """The config Hydra composes for ``OVERRIDES``, not yet validated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_schema()
    with initialize_config_module("hets_ep.conf", version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def compose(overrides: Sequence[str] = ()) -> Config:
    """The validated config that ``hets-ep train OVERRIDES`` would run (for scripts and tests)."""
    return validate(compose_groups(overrides))


def validate(cfg: DictConfig) -> Config:
    """Merge a composed config into the schema; raise :class:`ConfigError` with one line."""
    try:
        # A plain copy: Hydra's composed nodes keep their schema type, and merging a typed node
        # silently drops keys added with `+key=value`.
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        if key and "not in" in message:
            message = f"unknown key{did_you_mean(key)}"
        raise ConfigError(f"{key}: {message}" if key else message) from None


def group_options(group: str) -> list[str]:
    """The options of a config group (``group_options("dt")`` → ``["gamma", …, "uniform"]``;
    none for a name that is no group)."""
    folder = resources.files("hets_ep.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def describe_options(group: str, width: int = 90) -> str:
    """One line per option of a config group: its name and the start of its file's leading
    comment (``hets-ep train --help`` shows the presets this way)."""
    folder = resources.files("hets_ep.conf").joinpath(group)
    lines = []
    for name in group_options(group):
        comment = [line.lstrip("# ").strip() for line in folder.joinpath(f"{name}.yaml").read_text().splitlines()
                   if line.startswith("#") and not line.startswith("# @package")]
        text = " ".join(comment)
        short = text if len(text) <= width else text[:width].rsplit(" ", 1)[0].rstrip(",;:") + " …"
        lines.append(f"{name:<26} {short}")
    return "\n".join(lines)


def config_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``dt.mean``, ``train.epochs``, …)."""
    node = Config() if node is None else node
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _section_type(annotation) -> Any:
    """The dataclass a field holds (``Optional[TensorBoardConfig]`` → ``TensorBoardConfig``), or None."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


@functools.cache
def roles(dotted: str) -> Roles:
    """The :class:`Roles` of a dotted key (``dt.mean``): what its field declares over what its
    sections declare. A key the schema does not hold (an older record's) takes its section's."""
    node, given = Config, {}
    for part in dotted.split("."):
        found = {f.name: f for f in dataclasses.fields(node)}.get(part) if node is not None else None
        if found is None:
            break
        given.update(found.metadata.get("roles", {}))
        node = _section_type(typing.get_type_hints(node)[part])
    return Roles(**given)


def key_type(dotted: str) -> Any:
    """The type the schema gives a dotted key (``float`` for ``dynamics.noise``), None for a key
    it does not hold or a section."""
    node: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = _section_type(hints[part]) or hints[part]
    return None if dataclasses.is_dataclass(node) else node


def declared(node: Any = Config, prefix: str = "") -> dict[str, bool]:
    """Per dotted key of the schema (every section's keys too), whether its field was declared
    with :func:`key`."""
    out = {}
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        out[f"{prefix}{f.name}"] = "roles" in f.metadata
        section = _section_type(hints[f.name])
        if section is not None:
            out.update(declared(section, f"{prefix}{f.name}."))
    return out


def did_you_mean(key: str) -> str:
    """``"; did you mean train.epochs?"`` for a near miss of a schema key, else ``""``."""
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""
