"""Serial and distributed (2-worker local Dask cluster) EM give the same result."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

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


def test_local_pose_search_does_not_depend_on_partitions_or_workers(small):
    ds, _ = small
    opts = EMOptions(n_classes=1, init="random", n_iter=1, partition_size=40, tol_changes=0, local_angles_deg=4.0,
                     local_shifts_px=1.0)  # fmt: skip
    serial = classify_em2d(ds, replace(opts, partition_size=120, batch_size=7))
    with DaskExecutor(n_workers=2, threads_per_worker=1) as ex:
        dist = classify_em2d(ds, opts, executor=ex)
    assert torch.allclose(serial.extra["pose_rotation"], dist.extra["pose_rotation"], atol=1e-9)
    assert torch.allclose(serial.extra["pose_offset_px"], dist.extra["pose_offset_px"], atol=1e-9)
    assert np.allclose(serial.volumes.numpy(), dist.volumes.numpy(), atol=1e-4)
    assert serial.log[-1]["log_likelihood"] == pytest.approx(dist.log[-1]["log_likelihood"], rel=1e-7)
    assert serial.log[-1]["pose_changes"] > 0  # the search moved some poses


def test_wmd_pca_on_stacks_gives_the_same_latents_on_a_two_worker_cluster(small):
    """The difference volumes of 2D stacks are made per partition on the Dask workers (the step is called with
    the dataset, the particles and the state only)."""
    from tomohet.methods.wmd_pca import WMDPCAOptions, fit

    ds, _ = small
    opts = WMDPCAOptions(n_components=2, partition_size=40)
    serial = fit(ds, opts)
    with DaskExecutor(n_workers=2, threads_per_worker=1) as ex:
        dist = fit(ds, opts, executor=ex)
    assert np.allclose(serial.latents, dist.latents, atol=1e-4)
