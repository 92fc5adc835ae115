"""`hets-ep report` on directories written by real tiny runs: per-seed data, paired tests,
pairing rules, the equivalent step, the robustness map, figures, old records, the sweep's end."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import MNIST_ROOT, ROOT, hets_ep
from hets_ep import cli, record
from hets_ep.report import ReportOptions, analyse, build_report, tables

# Tiny runs: 3 epochs (the late window) on 320 images, a 500-image test set.
SMALL = ("train.progress=false", f"dataset.root={MNIST_ROOT}", "dataset.subset=320", "dataset.test_subset=500",
         "model.hidden=[32]", "train.epochs=3", "ep.T1=10", "ep.T2=4")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Real runs: scalar and lognormal at mean dt 0.3 and 0.5, seeds 0–2; one run with another
    dataset size."""
    root = tmp_path_factory.mktemp("sweep")
    ended = hets_ep("train", "-m", *SMALL, "seed=0,1,2", "dt=scalar,lognormal", "dt.mean=0.3,0.5",
                    f"hydra.sweep.dir={root / 'grid'}", check=True)
    (root / "sweep_end.txt").write_text(ended.stdout)
    hets_ep("train", *SMALL, "seed=0", "dt=lognormal", "dt.mean=0.3", "dataset.subset=640",
            f"hydra.run.dir={root / 'bigger'}", check=True)
    return root


def _fake_run(path, seed: int, accs: list[float], status: str = "completed", steps: float = 100.0,
              capped: float | None = None, **config):
    """A run record with a chosen test-accuracy curve (for cases with known answers), its
    summary built as the trainer builds it."""
    from omegaconf import OmegaConf

    from hets_ep import atomic
    from hets_ep.config import Config

    cfg = OmegaConf.structured(Config(seed=seed))
    for key, value in config.items():
        OmegaConf.update(cfg, key, value)
    atomic.write_text(path / record.CONFIG, OmegaConf.to_yaml(cfg))
    rows = [record.EpochRow(epoch=i + 1, train_loss=0.1, train_acc=a, test_loss=0.1, test_acc=a,
                            train_fp_residual=0.01, train_unconverged=0.1, train_step_residual=0.01,
                            test_fp_residual=0.01, test_unconverged=0.1, test_step_residual=0.01, test_oscillation=0,
                            max_state=1, lr=[0.1], epoch_time_s=1, samples_per_s=1, best_acc=max(accs[:i + 1]),
                            drawdown=0, collapses_so_far=0, train_relaxation_steps=steps, train_loss_spikes=0,
                            train_capped=capped)
            for i, a in enumerate(accs)]
    record.write_rows(path, rows)
    dt = {"mean": config.get("dt.mean", 0.5), "cv": config.get("dt.cv", 0.0)}
    record.write_summary(path, record.summarize(rows, status, seed, OmegaConf.to_object(cfg), 10, dt=dt,
                                                timings={"total_s": 1.0}, versions={}, runtime={}))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Known answers: at lr_scale 1 every run trains (scalar best at mean 0.5); at lr_scale 4
    scalar runs collapse and lognormal runs train."""
    root = tmp_path_factory.mktemp("grid")
    scalar = {(1, 0.3): [0.90, 0.93, 0.94], (1, 0.5): [0.92, 0.95, 0.96], (4, 0.3): [0.9, 0.5, 0.52],
              (4, 0.5): [0.91, 0.6, 0.55]}
    for (lr, mean), accs in scalar.items():
        for seed in range(4):
            jitter = [a + 0.002 * seed for a in accs]
            _fake_run(root / f"s{lr}{mean}{seed}", seed, jitter, **{"optimizer.lr_scale": float(lr),
                                                                     "dt.mean": mean})
            _fake_run(root / f"l{lr}{mean}{seed}", seed, [0.9, 0.92 + 0.01 * mean, 0.925 + 0.003 * seed + 0.01 * mean],
                      **{"optimizer.lr_scale": float(lr), "dt.mean": mean, "dt.dist": "lognormal", "dt.cv": 0.5})
    return root


def _late(run_dir) -> float:
    rows = [json.loads(line) for line in (run_dir / record.METRICS).read_text().splitlines()]
    return float(np.mean([r["test_acc"] for r in rows[-3:]]))


def _runs(root, **keys):
    """Run directories whose saved config has these values (read independently of the report)."""
    out = {}
    for path in root.rglob(record.SUMMARY):
        config = (path.parent / record.CONFIG).read_text()
        if all(f"{k}: {v}" in config for k, v in keys.items()):
            out[json.loads(path.read_text())["seed"]] = path.parent
    return out


@pytest.mark.slow  # a 13-run sweep (CI runs it)
def test_per_seed_table_and_paired_tests_equal_direct_computations(sweep, tmp_path):
    out = tmp_path / "report"
    hets_ep("report", str(sweep / "grid"), "--out", str(out), "--match", "dt.mean", check=True)
    seeds = pd.read_csv(out / "seeds.csv")
    assert len(seeds) == 12 and {"seed", "late", "final", "best", "auc", "collapse", "max_drawdown", "trained",
                                 "test_fp_residual", "nudged_unconverged", "dt_mean", "dt_cv", "wall_s"} <= set(seeds)
    scalar = _runs(sweep / "grid", dist="scalar", mean=0.3)
    lognormal = _runs(sweep / "grid", dist="lognormal", mean=0.3)
    assert sorted(scalar) == sorted(lognormal) == [0, 1, 2]
    a = np.array([100 * _late(lognormal[s]) for s in range(3)])
    b = np.array([100 * _late(scalar[s]) for s in range(3)])
    comps = pd.read_csv(out / "comparisons.csv")
    row = comps[comps["keys"].str.contains("dt.dist=lognormal") & comps["keys"].str.contains("dt.mean=0.3")].iloc[0]
    assert row["baseline"] == "scalar μ=0.30" and row["pairs"] == 3
    assert row["mean_diff"] == pytest.approx(np.mean(a - b))
    assert row["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert len(comps) == 2 and comps["p_holm"].min() >= comps["p_t"].min()  # Holm over both comparisons
    conditions = pd.read_csv(out / "conditions.csv")
    assert conditions.set_index("condition").loc["lognormal μ=0.30 cv=0.50", "late_mean"] == pytest.approx(np.mean(a))
    text = (out / "report.md").read_text()
    assert "**Metric:** `late`" in text and "p after Holm's correction over the family at α = 0.05 decides" in text
    for name in ("learning_curves.png", "paired_differences.png", "dt_histograms.png", "convergence.png"):
        assert (out / name).stat().st_size > 10_000, name


@pytest.mark.slow  # a 13-run sweep (CI runs it)
def test_runs_of_another_context_are_not_paired(sweep, tmp_path):
    """A run on another dataset size has no baseline of its own context: said, not compared."""
    out = tmp_path / "report"
    result = hets_ep("report", str(sweep), "--out", str(out), check=True)
    comps = pd.read_csv(out / "comparisons.csv")
    lonely = comps[comps["keys"].str.contains("dataset.subset=640")].iloc[0]
    assert lonely["pairs"] == 0 and "no baseline with the same dataset.subset" in lonely["note"]
    assert "Not compared:" in result.stdout


@pytest.mark.slow
def test_best_baseline_equivalent_step_and_robustness_map(grid, tmp_path):
    out = tmp_path / "report"
    text = build_report([grid], out, ReportOptions(baseline="best", equivalent="dt.mean",
                                                   robust=("optimizer.lr_scale", "dt.mean")))
    comps = pd.read_csv(out / "comparisons.csv")
    # The best scalar condition of each context (lr_scale): mean 0.5 at both.
    assert set(comps[comps["keys"].str.endswith("lr_scale=1")]["baseline"]) == {"scalar μ=0.50 lr_scale=1"}
    assert set(comps[comps["keys"].str.endswith("lr_scale=4")]["baseline"]) == {"scalar μ=0.50 lr_scale=4"}
    big = comps[comps["keys"].str.endswith("lr_scale=4") & comps["keys"].str.contains("dt.mean=0.5")].iloc[0]
    assert big["mean_diff"] > 20 and big["verdict"] in ("better", "trend (better, not after Holm)")
    eq = pd.read_csv(out / "equivalent.csv").set_index("condition")
    # Lognormal at lr_scale 4 beats both scalar means: above the curve; at lr_scale 1 it sits on it.
    assert eq.loc["lognormal μ=0.50 cv=0.50 lr_scale=4", "position"] == "above the best scalar step"
    rob = pd.read_csv(out / "robustness.csv")
    trains = rob.groupby("dist")["cell_trains"].sum().to_dict()
    assert trains == {"lognormal": 4, "scalar": 2}
    tests = pd.read_csv(out / "robustness_tests.csv").iloc[0]
    # 8 pairs (2 cells × 4 seeds) trained with lognormal only: McNemar p = 2 · 0.5⁸.
    assert tests["pairs"] == 16 and tests["p_mcnemar"] == pytest.approx(2 * 0.5**8)
    assert tests["verdict"] == "more runs train" and "### Robustness map over optimizer.lr_scale, dt.mean" in text
    for name in ("robustness.png", "robustness_differences.png", "equivalent_step.png"):
        assert (out / name).stat().st_size > 10_000, name


def test_a_version_1_run_still_loads_into_a_report(tmp_path):
    shutil.copytree(ROOT / "tests" / "data" / "v1_run", tmp_path / "old")
    text = build_report([tmp_path / "old"], tmp_path / "report")
    assert "1 in 1 conditions" in text
    assert pd.read_csv(tmp_path / "report" / "seeds.csv")["late"].iloc[0] == pytest.approx((0.6806 + 0.7469) / 2)


def test_report_on_an_empty_or_foreign_directory(tmp_path, capsys):
    from hets_ep import cli

    (tmp_path / "notes.txt").write_text("not a run")
    for path, message in ((tmp_path, "no runs found under"), (tmp_path / "nope", "no such file or directory")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["report", str(path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # a 13-run sweep (CI runs it)
def test_a_sweep_ends_with_a_summary_table_and_its_report(sweep):
    table = (sweep / "sweep_end.txt").read_text()
    assert "late % [95% CI]" in table and "lognormal μ=0.30 cv=0.50" in table and "scalar μ=0.50" in table
    assert (sweep / "grid" / "report" / "report.md").is_file() and (sweep / "grid" / "report" / "seeds.csv").is_file()


def test_a_seed_that_appears_twice_counts_once_and_the_other_is_named(tmp_path, capsys):
    """A rerun sweep, two overlapping folders, a copied run: one run per (condition, seed), the
    finished one written last, and the others named; --strict refuses instead."""
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in range(3):
        _fake_run(first / str(seed), seed, [0.9, 0.91, 0.92 + 0.001 * seed])
        _fake_run(first / f"l{seed}", seed, [0.9, 0.92, 0.93 + 0.001 * seed], **{"dt.dist": "lognormal", "dt.cv": 0.5})
    _fake_run(second / "0", 0, [0.9, 0.91, 0.5])                       # the rerun of seed 0, written last
    _fake_run(second / "1", 1, [0.9, 0.2, 0.1], status="interrupted")  # an unfinished rerun of seed 1
    shutil.copytree(first / "2", second / "copy")                       # a copied run
    out = tmp_path / "report"
    text = build_report([first, second, first / "0"], out)               # first/0 is named twice, too
    seeds = pd.read_csv(out / "seeds.csv")
    scalar = seeds[seeds["dt.dist"] == "scalar"].set_index("seed")
    assert len(scalar) == 3 and scalar.loc[0, "path"] == str(second / "0")  # the finished run written last
    assert scalar.loc[1, "path"] == str(first / "1") and scalar.loc[0, "late"] == pytest.approx((0.9 + 0.91 + 0.5) / 3)
    assert f"{first / '0'} (kept {second / '0'})" in text and f"{second / '1'} (kept {first / '1'})" in text
    comparison = pd.read_csv(out / "comparisons.csv").iloc[0]
    assert comparison["pairs"] == 3
    with pytest.raises(SystemExit) as strict:
        cli.main(["report", str(first), str(second), "--strict", "--out", str(tmp_path / "strict")])
    assert strict.value.code == 2 and "appears 2 times in one condition" in capsys.readouterr().err


def test_unfinished_runs_are_counted_not_scored_and_the_tables_say_why(tmp_path):
    for seed in range(2):
        _fake_run(tmp_path / f"s{seed}", seed, [0.9, 0.91, 0.92])
        _fake_run(tmp_path / f"l{seed}", seed, [0.9, 0.93, 0.95], **{"dt.dist": "lognormal", "dt.cv": 0.5})
    _fake_run(tmp_path / "l2", 2, [0.5, 0.6], status="interrupted", **{"dt.dist": "lognormal", "dt.cv": 0.5})
    _fake_run(tmp_path / "s2", 2, [0.5, 0.6, 0.7])
    analysis = analyse([tmp_path])
    lognormal = next(c for c in analysis.conditions if c.values["dt.dist"] == "lognormal")
    assert list(lognormal.metric("late").index) == [0, 1]  # the interrupted seed 2 has no late accuracy
    compact = tables.compact(analysis)
    assert "interrupted" in compact.splitlines()[0]
    assert [line.split()[-2] for line in compact.splitlines()[1:]] == ["1", "0"]  # lognormal, then scalar
    text = tables.markdown(analysis)
    assert "2 paired seeds per comparison" in text and "2–2" not in text
    assert "(no CI: < 3 seeds)" in text and "the 95% BCa bootstrap interval over seeds is descriptive" in text


def test_tracker_settings_never_make_a_condition(tmp_path):
    _fake_run(tmp_path / "plain", 0, [0.9, 0.91, 0.92])
    from hets_ep.config import MLflowConfig

    _fake_run(tmp_path / "tracked", 1, [0.9, 0.91, 0.93], **{"logger.mlflow": MLflowConfig("sqlite:///x.db")})
    assert len(analyse([tmp_path]).conditions) == 1


def test_secondary_endpoints_and_the_spread_test_equal_scipy(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(6):
        base = 0.9 + 0.01 * rng.standard_normal()
        _fake_run(tmp_path / f"s{seed}", seed, [0.8, base - 0.1 * rng.random(), base])
        _fake_run(tmp_path / f"l{seed}", seed, [0.8, base + 0.01, base + 0.005 * rng.standard_normal()],
                  **{"dt.dist": "lognormal", "dt.cv": 0.5})
    analysis = analyse([tmp_path], ReportOptions(equivalence=1.0))
    row = analysis.comparisons.iloc[0]
    seeds = pd.concat([c.table.assign(dist=c.values["dt.dist"]) for c in analysis.conditions])
    a = 100 * seeds[seeds.dist == "lognormal"].sort_values("seed")["late"].to_numpy()
    b = 100 * seeds[seeds.dist == "scalar"].sort_values("seed")["late"].to_numpy()
    assert row["p_brown_forsythe"] == pytest.approx(stats.levene(a, b, center="median").pvalue)
    from statsmodels.stats.weightstats import ttost_paired

    assert row["p_tost"] == pytest.approx(ttost_paired(a, b, -1.0, 1.0)[0])
    drawdown = analysis.secondary.set_index("endpoint").loc["max_drawdown"]
    da = 100 * seeds[seeds.dist == "lognormal"].sort_values("seed")["max_drawdown"].to_numpy()
    db = 100 * seeds[seeds.dist == "scalar"].sort_values("seed")["max_drawdown"].to_numpy()
    assert drawdown["mean_diff"] == pytest.approx(np.mean(da - db))
    assert drawdown["p_t"] == pytest.approx(stats.ttest_rel(da, db).pvalue)
    assert set(analysis.secondary["endpoint"]) >= {"max_drawdown", "jitter", "loss_spikes", "relaxation_steps"}


def test_a_baseline_is_named_as_the_command_line_writes_its_value(tmp_path):
    """``--baseline dynamics.noise=0.0`` names the runs whose noise is 0 (written 0.0 or 0)."""
    for seed in range(3):
        _fake_run(tmp_path / f"q{seed}", seed, [0.9, 0.91, 0.92])
        _fake_run(tmp_path / f"n{seed}", seed, [0.9, 0.9, 0.9 - 0.01 * seed], **{"dynamics.noise": 0.04})
    for text in ("dynamics.noise=0.0", "dynamics.noise=0", "dynamics.noise=0.00"):
        row = analyse([tmp_path], ReportOptions(baseline=text)).comparisons.iloc[0]
        assert row["pairs"] == 3 and row["mean_diff"] == pytest.approx(-100 * (0.01 + 0.01 / 3), abs=1e-6), text


def test_the_report_refuses_what_these_runs_cannot_answer(tmp_path, capsys):
    for seed in range(3):
        _fake_run(tmp_path / f"s{seed}", seed, [0.9, 0.91, 0.92])
        _fake_run(tmp_path / f"l{seed}", seed, [0.9, 0.9, 0.91], **{"dt.dist": "lognormal", "dt.cv": 0.5})
    from hets_ep.errors import HetsEpError

    for options, message in [
        (ReportOptions(match=("dt.meen",)), "--match dt.meen: no run has this key; did you mean dt.mean?"),
        (ReportOptions(equivalent="dt.mean"), "--equivalent dt.mean: does not vary between these runs (all 0.5)"),
        (ReportOptions(select="val_late", baseline="best"), "--select val_late: no run holds out a validation split"),
        (ReportOptions(baseline="dt.dist=scalr"), "--baseline dt.dist=scalr: no condition matches"),
        (ReportOptions(boundary="dynamics.noize"), "--boundary dynamics.noize: no run has this key; did you mean "
                                                  "dynamics.noise?"),
    ]:
        with pytest.raises(HetsEpError, match=re.escape(message)):
            analyse([tmp_path], options)
    from hets_ep import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(tmp_path), "--match", "dt.meen"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "did you mean dt.mean?" in err


def test_ratio_endpoints_are_tested_on_the_log_scale_and_caps_are_named(tmp_path):
    """Relaxation steps whose per-seed ratio varies by multiples: the paired t-test on the logs,
    the geometric-mean ratio and its interval; a condition whose phases stopped at their caps is
    named, with the budget to try; the header states the late window and the trained rule."""
    ratios = [1.8, 2.5, 3.1, 4.0, 7.1]
    for seed, ratio in enumerate(ratios):
        _fake_run(tmp_path / f"s{seed}", seed, [0.9, 0.91, 0.92], steps=1000.0 + 10 * seed, **{"ep.tol": 1e-3})
        _fake_run(tmp_path / f"l{seed}", seed, [0.9, 0.91, 0.92], steps=ratio * (1000.0 + 10 * seed), capped=0.25,
                  **{"dt.dist": "lognormal", "dt.cv": 0.5, "ep.tol": 1e-3})
    analysis = analyse([tmp_path])
    steps = analysis.secondary.set_index("endpoint").loc["relaxation_steps"]
    assert steps["scale"] == "log" and steps["p_t"] == pytest.approx(stats.ttest_1samp(np.log(ratios), 0).pvalue)
    assert np.exp(steps["mean_diff"]) == pytest.approx(np.exp(np.mean(np.log(ratios))))
    text = tables.markdown(analysis)
    assert f"{np.exp(np.mean(np.log(ratios))):.2f}×" in text
    assert "a phase stopped at its cap (ep.T1=30, ep.T2=10) above ep.tol=0.001 in 25.0% of batches" in text
    assert "`late` averages the last 3 epochs" in text and "chance + 0.8 × (1 − chance) (82.0% with 10 classes" in text


def test_a_cap_under_state_noise_is_named_as_the_noise_floor_not_a_budget(tmp_path):
    """Under state noise the residual never settles below the tolerance: the note says so instead
    of advising more steps."""
    for seed in range(3):
        _fake_run(tmp_path / f"n{seed}", seed, [0.9, 0.91, 0.92], capped=0.5,
                  **{"ep.tol": 1e-3, "dynamics.noise": 0.02})
        _fake_run(tmp_path / f"q{seed}", seed, [0.9, 0.91, 0.92], capped=0.5, **{"ep.tol": 1e-3})
    text = tables.markdown(analyse([tmp_path]))
    assert "phases end above the residual tolerance; under state noise (dynamics.noise=0.02) the residual" in text
    assert text.count("raise ep.T1/ep.T2") == 1  # the noise-free condition only
