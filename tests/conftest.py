"""Shared fixtures: the MNIST files (from ../shared/data/mnist or $HETS_EP_DATA) and CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mnist_root() -> Path:
    candidates = [os.environ.get("HETS_EP_DATA"), ROOT.parent / "shared" / "data" / "mnist",
                  ROOT / "hets_ep" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
            return Path(c)
    raise RuntimeError("MNIST files not found: set HETS_EP_DATA to a folder with the four .gz files")


MNIST_ROOT = _mnist_root()

# One compilation cache for the whole session, this process and the commands it starts: the
# tests compile the same small programs many times (HETS_EP_CACHE also holds downloads, which
# the tests never make outside their own temporary folders).
os.environ.setdefault("HETS_EP_CACHE", tempfile.mkdtemp(prefix="hets-ep-test-cache-"))


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache():
    from hets_ep import xla
    from hets_ep.data.registry import cache_dir

    xla.enable_compilation_cache(cache_dir())


@pytest.fixture(scope="session")
def mnist():
    from hets_ep.data import load_dataset

    return load_dataset("mnist", root=str(MNIST_ROOT))


@pytest.fixture(scope="session")
def batch(mnist):
    """32 MNIST training images and labels."""
    return mnist.x_train[:32], mnist.y_train[:32]


def _env(extra: dict | None = None) -> dict:
    """The tests' environment for a command: the test helpers (``hold``) importable."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def hets_ep(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the ``hets-ep`` command line in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "hets_ep", *args], cwd=cwd or ROOT, capture_output=True,
                            text=True, timeout=timeout, env=_env(env))
    if check and result.returncode != 0:
        raise AssertionError(f"hets-ep {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


# Small, fast settings for runs in tests: real MNIST, a subset, a narrow network.
TINY = ("train.progress=false", f"dataset.root={MNIST_ROOT}", "dataset.subset=1000", "model.hidden=[64]",
        "train.epochs=2", "train.eval_batch_size=2000", "ep.T1=15", "ep.T2=5")


def start(*args: str, cwd: Path | None = None, **popen) -> subprocess.Popen:
    """Start ``hets-ep ARGS`` in a subprocess (for signals), its output piped."""
    return subprocess.Popen([sys.executable, "-m", "hets_ep", *args], cwd=cwd or ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), **popen)


def held(at: str, marker: Path, job: int = 0) -> list[str]:
    """Overrides that hold a run or sweep at ``at`` until it is signalled (tests/hold.py)."""
    return ["+hydra.callbacks.hold._target_=hold.Hold", f"+hydra.callbacks.hold.at={at}",
            f"+hydra.callbacks.hold.marker={marker}", f"+hydra.callbacks.hold.job={job}"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` exists (the process must still run)."""
    import time

    begun = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - begun < timeout, f"{path} did not appear"
        time.sleep(0.05)


def setup(input_shape, dt_spec=None, seed: int = 0, **model):
    """``(net, params, dt)``: a network from the ``model`` config's keys (its schema defaults
    otherwise), initial weights of ``seed`` and a dt draw (scalar dt 1 unless ``dt_spec``)."""
    import jax
    import jax.numpy as jnp

    from hets_ep.config import DtConfig, ModelConfig
    from hets_ep.timeconstants import sample_dt

    net = ModelConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in model.items()}).build(10)
    params = net.init(jax.random.key(seed), input_shape)
    dt, _ = sample_dt(seed, dt_spec or DtConfig("scalar", 1.0), net.state_shapes(input_shape))
    return net, params, tuple(map(jnp.asarray, dt))


def train_here(run_dir: Path, *overrides: str):
    """Train ``TINY + overrides`` in this process (no CLI start-up); returns the summaries."""
    from hets_ep.config import compose
    from hets_ep.train import train

    return train(compose([*TINY, *overrides]), run_dir)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    """A run's epoch rows without the fields that time it (equal runs differ only there)."""
    import dataclasses

    from hets_ep import record

    assert (Path(run_dir) / record.METRICS).is_file(), f"no metrics in {run_dir}"
    return [{k: v for k, v in dataclasses.asdict(r).items() if k not in ("epoch_time_s", "samples_per_s")}
            for r in record.read_rows(run_dir)]


def assert_metrics_agree(a: Path, b: Path, epochs: int) -> None:
    """Two runs' metrics (``epochs`` rows each) agree as one program's members agree with runs
    alone: counts and flags exactly, floats to round-off. The oscillation count thresholds tiny
    increments, so round-off of another program (members batched and sharded) moves a few of its
    flips."""
    rows_a, rows_b = metrics_without_timing(a), metrics_without_timing(b)
    assert len(rows_a) == len(rows_b) == epochs, (a, len(rows_a), len(rows_b))
    for ra, rb in zip(rows_a, rows_b):
        for key, value in rb.items():
            if not isinstance(value, float):
                assert ra[key] == value, (a, key)
                continue
            assert ra[key] == pytest.approx(value, rel=1e-2 if key == "test_oscillation" else 1e-5, abs=1e-7), (a, key)


def assert_close_trees(a, b, atol=0.0):
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node Slurm cluster for the session (tests/slurm_cluster.py)."""
    from slurm_cluster import Cluster, Unavailable

    try:
        cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    except Unavailable as why:
        pytest.skip(f"no local Slurm: {why}")
    yield cluster
    cluster.stop()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow or slurm (CI=true does too)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("CI", "").lower() == "true" or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow or slurm: run with --run-slow (CI runs them)")
    for item in items:
        if "slow" in item.keywords or "slurm" in item.keywords:
            item.add_marker(skip)
