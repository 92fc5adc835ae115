"""The built wheel ships the config tree and MNIST, so an installed hets-ep runs offline."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_wheel_ships_configs_and_mnist(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hets_ep-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("hets_ep/conf/train.yaml", "hets_ep/conf/dt/lognormal.yaml", "hets_ep/conf/ep/symmetric.yaml",
                     "hets_ep/conf/experiment/ernoult2019.yaml", "hets_ep/conf/hydra/launcher/slurm.yaml",
                     "hets_ep/data/mnist/train-images-idx3-ubyte.gz"):
        assert required in names, required

