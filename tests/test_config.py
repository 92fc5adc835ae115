"""The config schema: one source of defaults, every option of every group composes, one-line errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from hets_ep.config import (Config, DatasetConfig, DtConfig, EPConfig, ModelConfig, OptimizerConfig, compose,
                            config_keys, declared, did_you_mean, group_options, roles)
from hets_ep.errors import ConfigError

SECTIONS = {"dataset": DatasetConfig, "model": ModelConfig, "dt": DtConfig, "ep": EPConfig,
            "optimizer": OptimizerConfig}
CONF = ROOT / "hets_ep" / "conf"


def test_no_overrides_is_the_schema_default():
    assert compose([]) == Config()


@pytest.mark.parametrize("group, option", [(g, o) for g in SECTIONS for o in group_options(g)])
def test_every_group_option_composes_to_what_the_python_api_builds(group, option):
    """``hets-ep train GROUP=OPTION`` runs exactly ``Config(GROUP=Section(**values in the YAML))``."""
    values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
    extra = {"path": "data.npz"} if (group, option) == ("dataset", "npz") else {}  # npz needs its file
    needs, model = [], ModelConfig()
    if (group, option) == ("ep", "holomorphic"):  # complex nudges need a holomorphic energy
        needs, model = ["model.activation=steep_sigmoid"], ModelConfig(activation="steep_sigmoid")
    expected = dataclasses.replace(Config(model=model), **{group: SECTIONS[group](**values, **extra)})
    assert compose([f"{group}={option}", *(f"{group}.{k}={v}" for k, v in extra.items()), *needs]) == expected


@pytest.mark.parametrize("option", group_options("logger"))
def test_every_logger_option_composes(option):
    chosen = compose([f"logger={option}"]).logger
    expected = {"many": {"tensorboard", "mlflow"}}.get(option, {option})
    assert {kind for kind in ("tensorboard", "mlflow", "wandb") if getattr(chosen, kind)} == expected
    both = compose(["logger=[tensorboard,wandb]"]).logger
    assert both.tensorboard is not None and both.wandb is not None and both.mlflow is None


def _pinned(option: str) -> dict:
    """What an experiment preset sets, with what its parents and chosen group options set under it."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{option}.yaml"))
    out = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, str):
            out.update(_pinned(entry))
        else:
            (key, choice), = entry.items()
            group = key.replace("override /", "")
            values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{choice}.yaml")) or {}
            out.update({f"{group}.{k}": v for k, v in _flat(values).items()})
    return {**out, **_flat(raw)}


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_preset_runs_what_it_pins(option):
    cfg = OmegaConf.structured(compose([f"experiment={option}"]))
    pinned = _pinned(option)
    assert pinned, option
    for key, value in pinned.items():
        assert OmegaConf.select(cfg, key) == value, (option, key)


def test_every_key_says_what_it_means():
    """Every key (and section) is declared with hets_ep.config.key: whether it defines a condition,
    may change on resume, may be changed by evaluate. A key added as a plain field fails here."""
    undeclared = [k for k, ok in declared().items() if not ok]
    assert not undeclared, f"declare these keys with hets_ep.config.key(...): {undeclared}"
    assert not roles("seed").condition and roles("dt.mean").condition and roles("dt.mean").evaluate
    assert roles("train.epochs").resume and not roles("train.batch_size").resume
    assert not roles("logger.tensorboard.dir").condition and roles("stability.residual_tol").evaluate
    # held per member by the compiled program (a stacked sweep's jobs may differ in them), or shaping it
    assert all(roles(k).member for k in ("seed", "dt.mean", "dt.dist", "ep.beta", "optimizer.lr_scale"))
    assert not any(roles(k).member for k in ("dt.redraw", "dt.per", "ep.T1", "optimizer.lr", "model.hidden"))


def _flat(node, prefix=""):
    out = {}
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_presets_repeat_a_schema_default_only_to_pin_a_paper_or_undo_their_parent():
    """An experiment preset may set a key to its schema default only if it says it pins a
    published setting, or if the preset it builds on sets that key otherwise."""
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config())))
    for option in group_options("experiment"):
        raw = OmegaConf.load(CONF / "experiment" / f"{option}.yaml")
        text = (CONF / "experiment" / f"{option}.yaml").read_text()
        parents = [p for p in OmegaConf.to_container(raw).get("defaults", []) if isinstance(p, str)]
        inherited = {}
        for parent in parents:
            inherited.update(_flat(OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{parent}.yaml"))))
        repeated = {k: v for k, v in _flat(OmegaConf.to_container(raw)).items()
                    if k in defaults and defaults[k] == v and inherited.get(k, v) == v}
        assert not repeated or "Pins" in text, f"conf/experiment/{option}.yaml repeats schema defaults {repeated}"


def test_group_yaml_files_hold_only_what_differs_from_the_schema():
    for group, section in SECTIONS.items():
        for option in group_options(group):
            values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
            defaults = dataclasses.asdict(section())
            repeated = {k: v for k, v in values.items() if defaults.get(k) == v and k not in ("name", "dist", "arch",
                                                                                              "estimator")}
            assert not repeated, f"conf/{group}/{option}.yaml repeats schema defaults {repeated}"


@pytest.mark.parametrize("build, message", [
    (lambda: DtConfig(mean=0.0), r"^dt\.mean: must be a finite number in \[0.01, 1\]"),
    (lambda: DtConfig(dist="lognormal", cv=-0.1), r"^dt\.cv: must be a finite number in \[0, inf\]"),
    (lambda: DtConfig(dt_min=0.5, dt_max=0.4, mean=0.45), r"^dt\.dt_max: "),
    (lambda: DtConfig(dt_min=0.0), r"^dt\.dt_min: "),
    (lambda: DtConfig(mean=1.5), r"^dt\.mean: "),
    (lambda: DtConfig(dist="scalar", cv=0.2), r"^dt\.cv: scalar dt has cv 0"),
    (lambda: DtConfig(dist="cauchy"), r"^dt\.dist: unknown 'cauchy'; choose one of scalar, uniform"),
    (lambda: DtConfig(mean=math.nan), r"^dt\.mean: "),
    (lambda: DtConfig(sample="rate"), r"^dt\.sample: "),
    (lambda: DtConfig(per="row"), r"^dt\.per: "),
    (lambda: EPConfig(T1=0), r"^ep\.T1: must be in \[1, 1000000\]"),
    (lambda: EPConfig(T2=0), r"^ep\.T2: "),
    (lambda: EPConfig(beta=0.0), r"^ep\.beta: must be a finite number in \(0, inf\]"),
    (lambda: EPConfig(beta=math.nan), r"^ep\.beta: "),
    (lambda: EPConfig(estimator="two_sided"), r"^ep\.estimator: unknown 'two_sided'"),
    (lambda: OptimizerConfig(lr=[]), r"^optimizer\.lr: must be a number or a list"),
    (lambda: OptimizerConfig(lr="fast"), r"^optimizer\.lr: must be a number or a list"),
    (lambda: OptimizerConfig(lr=-0.1), r"^optimizer\.lr: must be a finite number in \(0, inf\]"),
    (lambda: OptimizerConfig(momentum=1.0), r"^optimizer\.momentum: "),
    (lambda: DatasetConfig(name="npz"), r"^dataset\.path: dataset=npz needs dataset.path=FILE.npz"),
    (lambda: DatasetConfig(path="my.npz"), r"^dataset\.path: is read only with dataset=npz"),
    (lambda: DatasetConfig(subset=0), r"^dataset\.subset: must be >= 1"),
    (lambda: ModelConfig(hidden=[]), r"^model\.hidden: must list at least one layer size"),
])
def test_each_bad_value_is_refused_with_one_line_naming_its_key(build, message):
    with pytest.raises(ConfigError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_bptt_needs_no_beta():
    assert EPConfig("bptt", beta=0.0).estimator == "bptt"


def test_unknown_keys_get_a_near_miss():
    assert "train.epochs" in config_keys() and "dt.mean" in config_keys()
    assert did_you_mean("train.epoch") == "; did you mean train.epochs?"
    assert did_you_mean("completely.else") == ""
    with pytest.raises(ConfigError, match=r"^dt\.means: unknown key; did you mean dt\.mean\?$"):
        compose(["+dt.means=3"])


def test_the_kubo2026_preset_is_the_published_standard_ep_command():
    """`main_dendritic.py --model MLP --archi 784 256 10 --alg EP --thirdphase --betas 0.0 0.1
    --T1 60 --T2 12 --mbs 64 --epochs 20 --act hard_sigmoid --optim sgd --lrs 0.4 0.02 --mmt 0.9`
    (Kubo 2026's standard EP; no --lr-decay, MSE and their update s ← σ(∂Φ/∂s): dt 1, Euler)."""
    cfg = compose(["experiment=kubo2026"])
    assert (cfg.model.arch, cfg.model.hidden, cfg.model.activation, cfg.model.loss, cfg.model.dynamics) == \
        ("mlp", [256], "hard_sigmoid", "mse", "leaky")
    assert (cfg.ep.estimator, cfg.ep.beta, cfg.ep.T1, cfg.ep.T2) == ("symmetric", 0.1, 60, 12)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.schedule) == \
        ("sgd", [0.4, 0.02], 0.9, "constant")
    assert (cfg.train.batch_size, cfg.train.epochs) == (64, 20)
    assert (cfg.dt.dist, cfg.dt.mean, cfg.dynamics.integrator, cfg.dynamics.update_order) == ("scalar", 1.0, "euler",
                                                                                              "sync")
