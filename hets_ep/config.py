"""The structured-config schema: every key a run accepts, its type and its valid values.

Hydra composes ``conf/`` and the command line; :func:`validate` then merges the result into
this schema before any work is done, so an unknown key, a value of the wrong type or an
impossible value stops the run with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, List, Optional, Sequence

import jax
import optax
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hets_ep.data.batching import NORMALIZATIONS
from hets_ep.data.registry import NAMES as DATASETS
from hets_ep.ep import EP_ESTIMATORS, Phases
from hets_ep.errors import ConfigError
from hets_ep.models import ACTIVATIONS, Network, build_network
from hets_ep.models.network import DYNAMICS, LOSSES
from hets_ep.timeconstants import DtSpec


# Beyond these a run would not fit in memory or time: almost surely a typo.
_MAX_COUNT = 10**6
_MAX_WIDTH = 2**16


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown {value!r}; choose one of {', '.join(map(str, choices))}")


def _positive(key: str, value, strict: bool = True) -> None:
    if not math.isfinite(value) or (value <= 0 if strict else value < 0):
        raise ConfigError(f"{key} must be a finite number {'>' if strict else '>='} 0, got {value}")


@dataclasses.dataclass
class DatasetConfig:
    name: str = "mnist"
    root: Optional[str] = None
    path: Optional[str] = None
    subset: Optional[int] = None
    normalize: str = "unit"
    augment: bool = False

    def __post_init__(self):
        _choice("dataset.name", self.name, DATASETS)
        _choice("dataset.normalize", self.normalize, NORMALIZATIONS)
        if self.name == "npz" and not self.path:
            raise ConfigError("dataset=npz needs dataset.path=FILE.npz")
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"dataset.subset must be >= 1 (or null for all), got {self.subset}")


@dataclasses.dataclass
class ModelConfig:
    arch: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [512])
    channels: List[int] = field(default_factory=lambda: [32, 64])
    kernel: int = 5
    padding: int = 0
    pool: str = "max"
    activation: str = "hard_sigmoid"
    loss: str = "mse"
    dynamics: str = "leaky"

    def __post_init__(self):
        _choice("model.arch", self.arch, ("mlp", "convnet"))
        _choice("model.activation", self.activation, tuple(ACTIVATIONS))
        _choice("model.loss", self.loss, LOSSES)
        _choice("model.dynamics", self.dynamics, DYNAMICS)
        _choice("model.pool", self.pool, ("max", "avg"))
        layers = self.hidden if self.arch == "mlp" else self.channels
        if not layers or min(layers) < 1 or max(layers) > _MAX_WIDTH:
            key = "model.hidden" if self.arch == "mlp" else "model.channels"
            raise ConfigError(f"{key} must list at least one layer size in [1, {_MAX_WIDTH}], got {list(layers)}")
        if self.kernel < 1 or self.padding < 0:
            raise ConfigError(f"model.kernel must be >= 1 and model.padding >= 0, got {self.kernel}, {self.padding}")

    def build(self, n_out: int) -> Network:
        return build_network(self.arch, n_out, hidden=self.hidden, channels=self.channels, kernel=self.kernel,
                             padding=self.padding, pool=self.pool, activation=self.activation, loss=self.loss,
                             dynamics=self.dynamics)


@dataclasses.dataclass
class OptimizerConfig:
    """``lr`` is one rate for all layers or one per layer (a layer's weights and bias share it)."""

    name: str = "sgd"
    lr: List[float] = field(default_factory=lambda: [0.1])
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_every: int = 10
    step_gamma: float = 0.1

    def __post_init__(self):
        _choice("optimizer.name", self.name, ("sgd", "adam"))
        _choice("optimizer.schedule", self.schedule, ("constant", "cosine", "step"))
        if not self.lr:
            raise ConfigError("optimizer.lr must list at least one learning rate")
        for lr in self.lr:
            _positive("optimizer.lr", lr)
        _positive("optimizer.weight_decay", self.weight_decay, strict=False)
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.step_every < 1:
            raise ConfigError(f"optimizer.step_every must be >= 1 epoch, got {self.step_every}")
        _positive("optimizer.step_gamma", self.step_gamma)

    def schedule_fn(self, steps_per_epoch: int, epochs: int) -> optax.Schedule:
        """Multiplier of the base rates over training steps (1 at step 0)."""
        if self.schedule == "cosine":
            return optax.cosine_decay_schedule(1.0, max(1, epochs * steps_per_epoch))
        if self.schedule == "step":
            return optax.exponential_decay(1.0, self.step_every * steps_per_epoch, self.step_gamma, staircase=True)
        return optax.constant_schedule(1.0)

    def build(self, params, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
        layers = layer_names(params)
        if len(self.lr) not in (1, len(layers)):
            raise ConfigError(f"optimizer.lr lists {len(self.lr)} rates; the model has {len(layers)} layers "
                              f"({', '.join(layers)}): give 1 or {len(layers)}")
        rates = self.lr * len(layers) if len(self.lr) == 1 else self.lr
        schedule = self.schedule_fn(steps_per_epoch, epochs)

        def per_layer(lr: float) -> optax.GradientTransformation:
            rate = lambda step: lr * schedule(step)  # noqa: E731
            if self.name == "adam":
                return optax.adam(rate)
            return optax.sgd(rate, momentum=self.momentum or None, nesterov=self.nesterov)

        labels = {"params": {name: jax.tree.map(lambda _: name, params["params"][name]) for name in layers}}
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.multi_transform({n: per_layer(r) for n, r in zip(layers, rates)}, labels))


def layer_names(params) -> list[str]:
    """Top-level layer names of a parameter tree, input side first (``layers_0``, …, ``dense``)."""
    def order(name: str):
        stem, _, index = name.rpartition("_")
        return (name == "dense", stem, int(index) if index.isdigit() else 0)

    return sorted(params["params"], key=order)


@dataclasses.dataclass
class TrainLoopConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    explode_threshold: float = 1.0e3
    check_every: int = 50
    progress: bool = True
    parallel_seeds: int = 1

    def __post_init__(self):
        for key in ("epochs", "batch_size", "eval_batch_size", "check_every", "parallel_seeds"):
            if not 1 <= getattr(self, key) <= _MAX_COUNT:
                raise ConfigError(f"train.{key} must be in [1, {_MAX_COUNT}], got {getattr(self, key)}")
        _positive("train.explode_threshold", self.explode_threshold)


@dataclasses.dataclass
class StabilityConfig:
    """Thresholds of the stability statistics (see :mod:`hets_ep.stability`)."""

    collapse_drop: float = 0.05
    chance_margin: float = 0.05
    jitter_window: int = 5
    residual_tol: float = 1.0e-3
    target_acc: float = 0.9
    gradcheck_every: int = 0

    def __post_init__(self):
        for key in ("collapse_drop", "chance_margin", "residual_tol", "target_acc"):
            _positive(f"stability.{key}", getattr(self, key))
        if self.jitter_window < 1 or self.gradcheck_every < 0:
            raise ConfigError("stability.jitter_window must be >= 1 and stability.gradcheck_every >= 0")


@dataclasses.dataclass
class GradcheckConfig:
    batch_size: int = 64
    estimators: List[str] = field(default_factory=lambda: list(EP_ESTIMATORS))

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"gradcheck.batch_size must be >= 1, got {self.batch_size}")
        for name in self.estimators:
            _choice("gradcheck.estimators", name, EP_ESTIMATORS)


@dataclasses.dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dt: DtSpec = field(default_factory=DtSpec)
    ep: Phases = field(default_factory=Phases)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    gradcheck: GradcheckConfig = field(default_factory=GradcheckConfig)
    seed: int = 0
    resume: Any = False

    def __post_init__(self):
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"seed must be in [0, 2^31), got {self.seed}")
        if not isinstance(self.resume, (bool, str)) or self.resume == "":
            raise ConfigError(f"resume must be true, false or a run directory, got {self.resume!r}")


SCHEMA_NAME = "train_schema"


def register_schema() -> None:
    """Make :class:`Config` the base of ``train.yaml`` (its defaults list starts with it), so
    every key exists with its type and default before the groups and overrides apply."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def compose(overrides: Sequence[str] = ()) -> Config:
    """The validated config that ``hets-ep train OVERRIDES`` would run (for scripts and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_schema()
    with initialize_config_module("hets_ep.conf", version_base="1.3"):
        return validate(hydra_compose("train", overrides=list(overrides)))


def validate(cfg: DictConfig) -> Config:
    """Merge a composed config into the schema; raise :class:`ConfigError` with one line."""
    try:
        # A plain copy: Hydra's composed nodes keep their schema type, and merging a typed node
        # silently drops keys added with `+key=value`.
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{key}: {message}" if key else message) from None
