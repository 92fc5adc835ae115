"""``hets-ep report PATH...``: per-seed data, paired tests with corrections, tables and figures.

Runs are found recursively and grouped into conditions (:mod:`hets_ep.report.runs`), one run
per (condition, seed); every condition is compared seed by seed with a baseline of the same
context, on a primary metric chosen up front (``late`` by default: mean test accuracy over the
last ``stability.late_window`` epochs); the statistics (:mod:`hets_ep.report.inference`) are
Holm-corrected over the report's family of comparisons. Beside the primary metric, every
comparison reports the secondary endpoints (max drawdown, jitter, loss spikes, relaxation
steps, spectral radius: paired differences, CIs, Holm over that secondary family) and the
spread of the primary metric across seeds (Brown–Forsythe). Optional analyses: equivalence
within a margin (``--equivalence M``, paired TOST), the equivalent scalar step
(``--equivalent dt.mean``) and the robustness map (``--robust KEY1,KEY2``).

Writes into ``--out`` (default ``FIRST_PATH/report``): ``report.md``, ``seeds.csv`` (one row
per run), ``conditions.csv``, ``comparisons.csv``, ``secondary.csv``, ``equivalent.csv``,
``robustness.csv`` and figures (:mod:`hets_ep.report.figures`); prints the main tables.
:class:`ReportOptions` holds every option and its default, for the command line and Python alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from hets_ep.errors import HetsEpError
from hets_ep.report.analysis import Analysis, ReportOptions, analyse, build_report, sweep_summary
from hets_ep.report.runs import METRICS

__all__ = ["Analysis", "ReportOptions", "analyse", "build_report", "main", "sweep_summary"]


def _pair(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(k for k in text.split(",") if k) if text else None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise HetsEpError(f"--train-fraction: expected numbers F[,F…] in (0, 1), got {text!r}") from None


def main(argv: Sequence[str]) -> None:
    defaults = ReportOptions()
    parser = argparse.ArgumentParser(prog="hets-ep report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output directory (default: FIRST_PATH/report)")
    parser.add_argument("--metric", default=defaults.metric, choices=list(METRICS),
                        help=f"the primary metric of every comparison (default {defaults.metric})")
    parser.add_argument("--baseline", default=defaults.baseline,
                        help=f"KEY=VALUE[,…]: the baseline conditions (default {defaults.baseline}); best: the scalar "
                             "condition with the best mean metric")
    parser.add_argument("--select", choices=list(METRICS),
                        help="the metric that picks the best baseline (default: --metric; val_late picks on the "
                             "validation split, so the test set decides only the comparison)")
    parser.add_argument("--match", default="", help="KEY[,…] a condition shares with its baseline, e.g. dt.mean")
    parser.add_argument("--equivalent", help="KEY: the scalar step (e.g. dt.mean) each condition's metric matches")
    parser.add_argument("--equivalence", type=float, metavar="M",
                        help="also test equivalence within ±M (in the metric's units) by paired TOST")
    parser.add_argument("--robust", help="KEY1,KEY2: the robustness map over two hyperparameters")
    parser.add_argument("--grid", help="ROW,COL: map the paired differences over two keys")
    parser.add_argument("--boundary", metavar="KEY",
                        help="the stability boundary along this stress axis (dynamics.noise, ep.beta, "
                             "optimizer.lr_scale, dt.mean, ep.T1, model.hidden: depth): P(train) per condition, the "
                             "stress at P = 0.5 with its interval, and its shift against the baseline")
    parser.add_argument("--boundary-scale", default=defaults.boundary_scale, choices=["auto", "log", "linear"],
                        help="fit P(train) in log or linear stress (auto: log when every stress is positive)")
    parser.add_argument("--train-fraction", default=str(defaults.train_fraction), metavar="F[,F…]",
                        help="a run trains if its late accuracy reaches chance + F × (1 − chance) and it never "
                             f"collapses (default {defaults.train_fraction}: 82%% with 10 classes); several (0.2,0.5,0.8): "
                             "the boundary at each, side by side, the first deciding every other table")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help=f"level after Holm's correction (default {defaults.alpha})")
    parser.add_argument("--family", help="a name for the family of comparisons this report corrects over")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"the bootstrap's random seed (default {defaults.seed})")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a (condition, seed) that appears more than once (default: keep the finished run "
                             "written last, and name the others)")
    args = parser.parse_args(argv)
    options = ReportOptions(metric=args.metric, baseline=args.baseline, select=args.select,
                            match=_pair(args.match) or (),
                            equivalent=args.equivalent, equivalence=args.equivalence, robust=_pair(args.robust),
                            grid=_pair(args.grid), boundary=args.boundary, boundary_scale=args.boundary_scale,
                            train_fractions=_fractions(args.train_fraction), alpha=args.alpha,
                            family=args.family, seed=args.seed, strict=args.strict)
    out = args.out or Path(args.paths[0]) / "report"
    text = build_report(args.paths, out, options)
    print(text)
    print(f"report written to {out / 'report.md'}")
