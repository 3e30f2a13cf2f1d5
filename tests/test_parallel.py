"""Serial and distributed (2-worker local Dask cluster) EM give the same result."""

from __future__ import annotations

import numpy as np
import pytest

from tomohet.data.relion5 import read_relion5
from tomohet.methods.em2d import EMOptions, classify_em2d
from tomohet.parallel import DaskExecutor
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("par")
    layout, truth = simulate_preset("smoke", out, seed=4, n_particles=120)
    return read_relion5(layout.optimisation_set), truth


def test_serial_equals_two_worker_cluster(small):
    ds, truth = small
    opts = EMOptions(n_classes=2, n_iter=3, partition_size=40, tol_changes=0)
    serial = classify_em2d(ds, opts)
    with DaskExecutor(n_workers=2, threads_per_worker=1) as ex:
        dist = classify_em2d(ds, opts, executor=ex)
    assert (serial.labels == dist.labels).all()
    assert np.allclose(serial.posteriors, dist.posteriors, atol=1e-6)
    assert np.allclose(serial.volumes.numpy(), dist.volumes.numpy(), atol=1e-5)
    assert [e["class_sizes"] for e in serial.log] == [e["class_sizes"] for e in dist.log]
