"""Linear landscapes from wedge-masked differences: ``wmd-pca`` (PEET / Dynamo) and ``msvd`` (emClarity).

One small hinge set (200 particles x 21 tilts, box 24 at 16 A/px, per-image SNR 0.5) is simulated once for the
module; each method must find the hinge angle (best of the top 3 components |Spearman rho| >= 0.8), its component
map must be the true motion, a focus mask without the moving domain must lose it, and the same must hold on the
RELION 3.1 subtomograms written from the same particles."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tomohet.data.io import read_any
from tomohet.methods import msvd, wmd_pca
from tomohet.physics.filters import masked_correlation, soft_sphere
from tomohet.physics.fourier import fft3_centered, ifft3_centered
from tomohet.simulate.datasets import simulate_preset

N_PARTICLES = 200


@pytest.fixture(scope="module")
def hinge(tmp_path_factory):
    out = tmp_path_factory.mktemp("hinge_wmd")
    layout, truth = simulate_preset("hinge", out, seed=0, n_particles=N_PARTICLES, snr=0.5,
                                    acquisition={"tilt_step": 6.0, "box": 24, "pixel_size": 16.0})  # fmt: skip
    meta = json.loads((out / "dataset.json").read_text())
    maps = torch.stack([torch.from_numpy(mrcfile.read(out / m).copy()) for m in meta["maps"]])
    return out, read_any(layout.optimisation_set), truth["coordinate"].to_numpy(), maps


def rhos(latents: np.ndarray, angle: np.ndarray, k: int = 3) -> np.ndarray:
    return np.array([abs(spearmanr(latents[:, i], angle)[0]) for i in range(min(k, latents.shape[1]))])


def check_contract(res, method: str, n: int, d: int) -> None:
    """The landscape output contract (tomohet.methods.landscape): shapes, dtypes, the explained variance of each
    latent column, its ratio of the total sorted and summing to <= 1, a per-pass log."""
    assert res.method == method
    n_comp = res.latents.shape[1]
    assert res.latents.shape == (n, n_comp) and res.latents.dtype == np.float64
    assert tuple(res.volumes.shape) == (n_comp, d, d, d) and res.volumes.dtype == torch.float32
    assert tuple(res.extra["mean_map"].shape) == (d, d, d)
    ratio = np.asarray(res.extra["explained_variance_ratio"])
    assert res.extra["ratio_of"] == "total"
    assert ratio.shape == (n_comp,) and (ratio > 0).all() and ratio.sum() <= 1 + 1e-9
    assert (np.diff(ratio) <= 1e-12).all(), "explained variance must be sorted"
    assert np.allclose(res.extra["explained_variance"], res.latents.var(0, ddof=1))
    assert (np.diff(res.latents.var(0)) <= 1e-9 * res.latents.var(0).max()).all(), "columns by decreasing variance"
    assert res.log and all({"iteration", "seconds", "images_per_s"} <= set(e) for e in res.log)


def test_registered_as_landscape_methods():
    from dataclasses import fields

    from tomohet.methods.landscape import LANDSCAPE_METHODS, LandscapeOptions

    for name, opts in (("wmd-pca", wmd_pca.WMDPCAOptions), ("msvd", msvd.MSVDOptions)):
        m = LANDSCAPE_METHODS[name]
        assert m.options_cls is opts and m.accepts(True) and m.accepts(False)
        assert {f.name for f in fields(LandscapeOptions)} <= {f.name for f in fields(opts)}


def test_principal_components_recover_a_planted_basis():
    """Planted rank-2 signal + weak noise: the right singular vectors span the planted basis, the scores are the
    projections onto them, the explained variance is the planted share."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(500, 2, generator=g, dtype=torch.float64))
    z = torch.randn(300, 2, generator=g, dtype=torch.float64) * torch.tensor([5.0, 2.0])
    x = (z @ basis.T + 0.01 * torch.randn(300, 500, generator=g, dtype=torch.float64) + 3.0).float()
    pcs = wmd_pca.principal_components(x, 4)
    v = pcs.vectors[:2].double()
    cos = torch.linalg.svdvals(v @ basis)  # cosines of the principal angles between the subspaces
    assert cos.min() > 0.999
    assert torch.allclose(pcs.vectors.double() @ pcs.vectors.double().T, torch.eye(4, dtype=torch.float64), atol=1e-3)
    proj = (x - pcs.mean).double() @ pcs.vectors.double().T
    assert np.allclose(proj.numpy(), pcs.scores, atol=1e-2 * np.abs(pcs.scores).max())
    assert pcs.explained[:2].sum() == pytest.approx(1.0, abs=5e-3) and pcs.explained[0] > 0.8
    assert (np.diff(pcs.explained) <= 0).all()


def test_small_box_volumes_pad_back_to_the_map():
    """A band-limited map, cropped in Fourier space to the feature box as the difference volumes are, comes back
    at box D with the same values (the component maps carry the right voxel size and density)."""
    d, s = 32, 16
    vol = torch.randn(d, d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    band = wmd_pca.band_filter(d, 0.0, 5.0).double()
    vol = ifft3_centered(fft3_centered(vol) * band)
    lo = d // 2 - s // 2
    small = ifft3_centered(fft3_centered(vol)[lo : lo + s, lo : lo + s, lo : lo + s])
    back = wmd_pca.pad_volumes(small[None].float(), d)[0].double()
    assert torch.allclose(back, vol, atol=1e-4 * float(vol.abs().max()))
    assert wmd_pca.box_for_resolution(d, 12.0, 60.0, 32) == 16  # 6.4 Fourier px + 1 px edge -> even box 16


def test_msvd_scales_are_kept_within_the_data():
    """10/20/40 A at 12 A/px with a 30 A consensus: 10 and 20 are clamped to 30 and merged, and the log says so."""
    log: list = []
    scales = msvd.effective_scales([10.0, 20.0, 40.0], {"Nyquist": 24.0, "the consensus resolution": 30.0}, log)
    assert scales == [30.0, 40.0]
    notes = " ".join(log)
    assert "scale 10 A is finer than the consensus resolution" in notes and "merged" in notes


def test_wmd_pca_finds_the_hinge(hinge):
    from tomohet.errors import InputError

    out, ds, angle, maps = hinge
    ckpt = Path(out) / "wmd_checkpoint.pt"
    res = wmd_pca.fit(ds, wmd_pca.WMDPCAOptions(n_components=4), checkpoint=ckpt)
    check_contract(res, "wmd-pca", ds.n_particles, ds.box)
    # a finished run's checkpoint: rerunning returns the same result at once; another run refuses it
    again = wmd_pca.fit(ds, wmd_pca.WMDPCAOptions(n_components=4), checkpoint=ckpt)
    assert np.array_equal(again.latents, res.latents) and torch.equal(again.volumes, res.volumes)
    with pytest.raises(InputError, match="checkpoint of another run"):
        wmd_pca.fit(ds, wmd_pca.WMDPCAOptions(n_components=3), checkpoint=ckpt)
    gram = res.volumes.reshape(4, -1).double() @ res.volumes.reshape(4, -1).double().T
    assert torch.allclose(gram, torch.eye(4, dtype=torch.float64), atol=2e-3)  # orthonormal at box D
    r = rhos(res.latents, angle)
    assert r.max() >= 0.8, r
    # the best component's map is the motion itself (its sign is arbitrary)
    best = int(r.argmax())
    sphere = soft_sphere(ds.box, 0.45 * ds.box)
    assert abs(masked_correlation(res.volumes[best], maps[-1] - maps[0], sphere)) >= 0.7
    # PEET's variance map: high where the domain moves
    motion = (maps - maps.mean(0)).abs().amax(0)
    assert masked_correlation(res.extra["variance_map"], motion, sphere) >= 0.6
    # the map at the ends of the component: closer to the matching true end state
    z = res.latents[:, best]
    ends = [res.extra["mean_map"] + float(np.quantile(z, q)) * res.volumes[best] for q in (0.05, 0.95)]
    lo_end = 0 if spearmanr(z, angle)[0] > 0 else 1
    cc = [[masked_correlation(e, m, sphere) for m in (maps[0], maps[-1])] for e in ends]
    assert cc[lo_end][0] > cc[lo_end][1] and cc[1 - lo_end][1] > cc[1 - lo_end][0]


def test_msvd_finds_the_hinge(hinge):
    out, ds, angle, maps = hinge
    res = msvd.fit(ds, msvd.MSVDOptions(scales_A=[48.0, 96.0], components_per_scale=2))
    check_contract(res, "msvd", ds.n_particles, ds.box)
    assert sorted(set(res.extra["component_scale_A"].tolist())) == [48.0, 96.0]
    assert res.extra["scales_A"] == [48.0, 96.0] and res.extra["notes"] == []
    assert res.latents.shape[1] == 4
    assert rhos(res.latents, angle).max() >= 0.8


def test_focus_mask_without_the_moving_domain_loses_the_hinge(hinge):
    """The mask keeps the core and leaves out the lid over its whole path with a margin of 4 px (64 A, about the
    features' resolution, 80 A: the band limit spreads the lid's difference that far); none of the top 3
    components then follows the angle."""
    out, ds, angle, maps = hinge
    motion = (maps - maps.mean(0)).abs().amax(0)
    region = (motion > 0.05 * motion.max()).float()[None, None]
    region = torch.nn.functional.conv3d(region, torch.ones(1, 1, 9, 9, 9), padding=4)[0, 0] > 0
    focus = (1 - region.float()) * soft_sphere(ds.box, 0.45 * ds.box)
    res = wmd_pca.fit(ds, wmd_pca.WMDPCAOptions(n_components=3), focus_mask=focus)
    r = rhos(res.latents, angle)
    assert r.max() <= 0.3, r


def test_wmd_pca_on_relion31_subtomograms(hinge):
    """The RELION 3.1 subtomograms (3D CTF volumes) of 100 of the particles, read back from their star file."""
    from tomohet.data.subtomo import write_relion31_subtomograms

    out, ds, angle, maps = hinge
    keep = np.arange(100)
    star = write_relion31_subtomograms(ds, Path(out) / "subtomograms", particles=keep)
    sub = read_any(star)
    assert sub.n_particles == len(keep)
    res = wmd_pca.fit(sub, wmd_pca.WMDPCAOptions(n_components=3))
    check_contract(res, "wmd-pca", sub.n_particles, sub.box)
    assert res.extra["input"] == "subtomograms"
    assert rhos(res.latents, angle[keep]).max() >= 0.8


def test_bad_options_are_one_line_errors(hinge):
    from tomohet.errors import InputError

    _, ds, _, _ = hinge
    with pytest.raises(InputError, match="n_components must be at least 1"):
        wmd_pca.fit(ds, wmd_pca.WMDPCAOptions(n_components=0))
    with pytest.raises(InputError, match=r"focus mask is \(16, 16, 16\), expected \(24, 24, 24\)"):
        wmd_pca.fit(ds, focus_mask=torch.ones(16, 16, 16))
    with pytest.raises(InputError, match="scales_A must be positive"):
        msvd.fit(ds, msvd.MSVDOptions(scales_A=[]))
