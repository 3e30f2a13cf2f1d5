"""Phantoms: mass fractions, state differences, hinge geometry, rendering accuracy, maps and models from files."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from tomohet.data.mrc import write_volume
from tomohet.errors import InputError
from tomohet.simulate import phantoms as ph


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def centroid_A(vol: torch.Tensor, pixel_size: float) -> np.ndarray:
    """Density-weighted centre (x, y, z) in Angstrom about the box centre."""
    d = vol.shape[-1]
    k = (torch.arange(d, dtype=torch.float64) - d // 2) * pixel_size
    v = vol.double()
    m = v.sum()
    return np.array([(v.sum((0, 1)) * k).sum() / m, (v.sum((0, 2)) * k).sum() / m, (v.sum((1, 2)) * k).sum() / m])


@pytest.fixture(scope="module")
def sets() -> dict[str, ph.PhantomSet]:
    return {name: ph.preset(name, box=32, seed=0) for name in ph.PRESETS}


def test_preset_mass_fractions_match_stated_values(sets):
    expected = {
        "assembly": {"A": 0.07, "B": 0.07, "C": 0.07},
        "two_state_easy": {"A": 0.11},
        "hinge": {"lid": 0.20},
        "mixture": {"A": 0.11, "lid": 0.20},
        "rare": {"A": 0.07},
        "ladder": {"A": 0.07, "B": 0.07, "C": 0.07},
        "rare_spread": {"A": 0.07},
    }
    for name, s in sets.items():
        assert s.stated_mass_fractions == expected[name]
        got = ph.mass_fractions(s.complex)
        for part, f in expected[name].items():
            assert got[part] == pytest.approx(f, abs=0.002), (name, part)
        assert sum(got.values()) == pytest.approx(1.0)
    # the rendered maps carry the same masses: each assembly state adds ~7% of the full complex's density
    sums = sets["assembly"].volumes.double().sum((1, 2, 3))
    steps = (sums[1:] - sums[:-1]) / sums[-1]
    np.testing.assert_allclose(steps.numpy(), 0.07, atol=0.003)
    easy = sets["two_state_easy"].volumes.double().sum((1, 2, 3))
    assert float((easy[1] - easy[0]) / easy[1]) == pytest.approx(0.11, abs=0.003)
    rare = sets["rare"]
    np.testing.assert_allclose(rare.state_weights, [0.95, 0.05])
    assert rare.state_names == ["core", "core+A"]
    assert sets["assembly"].state_names == ["core", "core+A", "core+A+B", "core+A+B+C"]


def test_maplike_phantoms_spread_the_difference_over_a_textured_core(sets):
    """ladder / rare_spread: each step's density lies in three separate pieces (not one blob), the core's
    density varies smoothly (not uniform), the abundances are 40/25/20/15% and 95/5%."""
    lad = sets["ladder"]
    np.testing.assert_allclose(lad.state_weights, [0.40, 0.25, 0.20, 0.15])
    np.testing.assert_allclose(sets["rare_spread"].state_weights, [0.95, 0.05])
    sums = lad.volumes.double().sum((1, 2, 3))
    np.testing.assert_allclose(((sums[1:] - sums[:-1]) / sums[-1]).numpy(), 0.07, atol=0.003)
    from sklearn.cluster import AgglomerativeClustering

    for name, sub in lad.complex.subunits.items():
        # single-linkage clusters at 25 A: three pieces, each of 20-50% of the step, 60+ A apart
        lab = AgglomerativeClustering(n_clusters=None, distance_threshold=25.0, linkage="single").fit(sub.xyz).labels_
        sizes = np.sort(np.bincount(lab))[::-1] / len(lab)
        assert len(sizes) == 3, (name, sizes)
        assert sizes.min() > 0.18 and sizes.max() < 0.5
        centres = np.stack([sub.xyz[lab == i].mean(0) for i in range(3)])
        assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 60
    w = lad.complex.core.weights
    assert w.mean() == pytest.approx(1.0) and 0.2 < w.std() < 0.4 and w.min() >= 0.3 - 1e-9
    # smooth: neighbouring core atoms (< 12 A apart) have correlated weights
    xyz = lad.complex.core.xyz
    near = torch.cdist(torch.as_tensor(xyz[:500]), torch.as_tensor(xyz)).numpy() < 12
    i, j = np.nonzero(near)
    keep = i != j
    assert np.corrcoef(w[i[keep]], w[j[keep]])[0, 1] > 0.8


def test_preset_shapes_and_grids(sets):
    a = sets["assembly"]
    assert a.volumes.shape == (4, 32, 32, 32) and a.volumes.dtype == torch.float32
    assert a.pixel_size == pytest.approx(12.0) and a.coordinate is None
    h = sets["hinge"]
    assert h.volumes.shape[0] == 11 and h.coordinate_range == (0.0, 30.0)
    np.testing.assert_allclose(h.coordinate, np.linspace(0, 30, 11))
    m = sets["mixture"]
    assert m.volumes.shape[0] == 22 and m.n_states == 2
    assert (m.state == np.repeat([0, 1], 11)).all()
    # maps rendered on demand equal the stored grid maps
    torch.testing.assert_close(m.volume(1, 15.0), m.volumes[m.nearest_map(1, 15.0)])
    # the particle is asymmetric: its inertia tensor has three distinct principal moments
    atoms = ph.state_atoms(a.complex, a.complex.subunits)
    x = atoms.xyz - atoms.centroid
    ev = np.linalg.eigvalsh(x.T @ x / len(x))
    assert ev[1] / ev[0] > 1.15 and ev[2] / ev[1] > 1.15
    extent = max(np.ptp(atoms.xyz[:, i]) for i in range(3))
    assert 220 < extent < 300
    # fits box 32 at 10 A/px; a box too small is a clear error
    ph.assembly(box=32, pixel_size=10.0)
    with pytest.raises(InputError, match="box"):
        ph.assembly(box=24, pixel_size=10.0)


def test_states_differ_exactly_in_the_subunit(sets):
    s = sets["assembly"]
    cx, p = s.complex, s.pixel_size
    for i, name in enumerate(["A", "B", "C"]):
        diff = s.volumes[i + 1] - s.volumes[i]
        sub = cx.subunits[name]
        alone = ph.render(sub.xyz, sub.weights, sub.sigma, 32, p)
        torch.testing.assert_close(diff, alone, atol=2e-4, rtol=1e-3)
        # the difference lies within 3 sigma (+ a voxel) of the subunit's atoms
        d = s.volumes.shape[-1]
        k = (torch.arange(d, dtype=torch.float64) - d // 2) * p
        grid = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3).flip(-1)  # (x, y, z)
        near = torch.cdist(grid, torch.as_tensor(sub.xyz)).min(1).values <= 3 * sub.sigma.max() + p
        mass = diff.double().abs().reshape(-1)
        assert float(mass[near].sum() / mass.sum()) > 0.99
        assert float(near.double().mean()) < 0.25  # ... which is a small part of the box
    # subunits do not overlap the core: no subunit atom sits closer than half a spacing to a core atom
    core = torch.as_tensor(cx.core.xyz)
    for sub in cx.subunits.values():
        assert float(torch.cdist(torch.as_tensor(sub.xyz), core).min()) > 0.5 * ph.DEFAULT_SPACING_A * 0.4


def test_hinge_moves_domain_centroid_by_the_arc(sets):
    s = sets["hinge"]
    cx, p = s.complex, s.pixel_size
    lid = cx.hinges["lid"]
    core = ph.render(cx.core.xyz, cx.core.weights, cx.core.sigma, 32, p)
    c0 = centroid_A(s.volumes[0] - core, p)
    c30 = centroid_A(s.volumes[-1] - core, p)
    # distance of the lid's centre of mass from the hinge axis, and the chord of a 30 degree arc
    v = lid.atoms.centroid - lid.pivot
    r = np.linalg.norm(v - (v @ lid.axis) * lid.axis)
    chord = 2 * r * math.sin(math.radians(15.0))
    assert 15.0 < chord < 50.0  # a few pixels at 12 A/px
    assert np.linalg.norm(c30 - c0) == pytest.approx(chord, abs=1.0)
    # the lid rotates rigidly about the axis: its centroid keeps its distance to the pivot
    assert np.linalg.norm(c30 - lid.pivot) == pytest.approx(np.linalg.norm(c0 - lid.pivot), abs=1.0)
    # the lid opens away from the core (its centroid moves away from the core's centre)
    assert np.linalg.norm(c30 - cx.core.centroid) > np.linalg.norm(c0 - cx.core.centroid) + 5.0
    # the core itself does not move
    mass = ph.mass_fraction(cx, "lid")
    assert float((s.volumes[-1] - s.volumes[0]).sum()) == pytest.approx(0.0, abs=1e-3 * cx.total_mass * mass)


def test_render_matches_the_analytic_gaussian():
    # one atom off the grid: mass conserved, mean at the atom, variance sigma^2 + pixel^2 / 12 per axis
    pos = np.array([[7.3, -11.1, 4.6]])
    sigma, p, box = 6.0, 3.0, 48
    vol = ph.render(pos, 2.5, sigma, box, p).double()
    assert float(vol.sum()) == pytest.approx(2.5, rel=1e-5)
    k = (torch.arange(box, dtype=torch.float64) - box // 2) * p
    for axis, sum_dims in ((0, (0, 1)), (1, (0, 2)), (2, (1, 2))):
        prof = vol.sum(sum_dims) / vol.sum()
        mean = float((prof * k).sum())
        var = float((prof * (k - mean) ** 2).sum())
        assert mean == pytest.approx(pos[0, axis], abs=1e-3)
        assert var == pytest.approx(sigma**2 + p**2 / 12, rel=0.01)
    # the peak voxel is the Gaussian's integral over it (point value x voxel volume for a wide Gaussian)
    wide = ph.render(np.zeros((1, 3)), 1.0, 12.0, 32, 2.0)
    peak = (2 * math.pi * 12.0**2) ** -1.5 * 2.0**3
    assert float(wide[16, 16, 16]) == pytest.approx(peak, rel=0.01)
    # many atoms: the map's sum equals the sum of the weights within 1%, at coarse and fine pixels
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-90, 90, size=(5000, 3))
    w = rng.uniform(0.5, 2.0, 5000)
    for box, p in ((32, 12.0), (64, 4.0)):
        assert float(ph.render(xyz, w, 5.0, box, p).double().sum()) == pytest.approx(w.sum(), rel=0.01)
    # orientation: x is the last array axis, z the first
    v = ph.render(np.array([[30.0, 0.0, 0.0]]), 1.0, 3.0, 32, 3.0)
    assert tuple(np.unravel_index(int(v.argmax()), v.shape)) == (16, 16, 26)


def test_render_speed_5000_atoms_box_64():
    rng = np.random.default_rng(1)
    xyz = rng.normal(scale=45.0, size=(5000, 3))
    ph.render(xyz, 1.0, 7.0, 64, 6.0)
    best = math.inf
    for _ in range(2):
        t = time.perf_counter()
        ph.render(xyz, 1.0, 7.0, 64, 6.0)
        best = min(best, time.perf_counter() - t)
    assert best < 2.0


def test_determinism_with_the_seed():
    a = ph.two_state_easy(seed=3)
    b = ph.two_state_easy(seed=3)
    c = ph.two_state_easy(seed=4)
    assert torch.equal(a.volumes, b.volumes)
    assert not torch.equal(a.volumes, c.volumes)
    assert corr(a.volumes[1], c.volumes[1]) > 0.95  # same shape, different pseudo-atoms


def test_map_loading_and_resampling(tmp_path):
    s = ph.two_state_easy(box=48, pixel_size=8.0)
    path = write_volume(tmp_path / "state.mrc", s.volumes[1], 8.0)
    coarse = ph.load_map(path, box=32, pixel_size=12.0)
    assert coarse.shape == (32, 32, 32) and coarse.dtype == torch.float32
    direct = ph.state_volume(s.complex, {"A"}, box=32, pixel_size=12.0)
    assert corr(coarse, direct) > 0.99
    # values are density per voxel (kept by resampling): the total scales with the number of voxels
    assert float(coarse.sum() / s.volumes[1].sum()) == pytest.approx((8.0 / 12.0) ** 3, rel=0.01)
    back = ph.resample_volume(coarse, 12.0, 48, 8.0)
    assert back.shape == (48, 48, 48)
    assert corr(back, s.volumes[1]) > 0.99
    # a non-integer box ratio (8 -> 10 A/px: 38.4 voxels) into a smaller box
    ten = ph.load_map(path, box=32, pixel_size=10.0)
    assert corr(ten, ph.state_volume(s.complex, {"A"}, box=32, pixel_size=10.0)) > 0.99
    # both states from files; abundances as given
    p0 = write_volume(tmp_path / "core.mrc", s.volumes[0], 8.0)
    st = ph.states_from_maps([p0, path], box=32, pixel_size=12.0, weights=[3, 1])
    assert st.volumes.shape == (2, 32, 32, 32) and st.state_names == ["core", "state"]
    np.testing.assert_allclose(st.state_weights, [0.75, 0.25])
    torch.testing.assert_close(st.volume(1), coarse)
    with pytest.raises(InputError, match="missing.mrc"):
        ph.load_map(tmp_path / "missing.mrc", 32, 12.0)


TINY_PDB = """\
ATOM      1  N   GLY A   1      10.000   0.000   0.000  1.00 20.00           N
ATOM      2  CA  GLY A   1      11.000   2.000   1.000  1.00 20.00           C
ATOM      3  O   GLY A   1      12.000  -1.000   3.000  1.00 20.00           O
ATOM      4  SG  CYS B   1     -10.000   5.000  -4.000  1.00 20.00           S
HETATM    5  O   HOH C   1      30.000  30.000  30.000  1.00 20.00           O
END
"""


def test_model_loading_with_gemmi(tmp_path):
    path = tmp_path / "tiny.pdb"
    path.write_text(TINY_PDB)
    atoms = ph.read_model_atoms(path)
    np.testing.assert_array_equal(atoms.weights, [7, 6, 8, 16])  # atomic numbers; the water is skipped
    raw = np.array([[10.0, 0, 0], [11, 2, 1], [12, -1, 3], [-10, 5, -4]])
    masses = np.array([14.007, 12.011, 15.999, 32.06])
    com = (raw * masses[:, None]).sum(0) / masses.sum()
    np.testing.assert_allclose(atoms.centre, com, atol=1e-2)
    np.testing.assert_allclose(atoms.xyz, raw - atoms.centre, atol=1e-3)
    assert list(atoms.chains) == ["A", "A", "A", "B"]

    cx = ph.complex_from_model(path, subunits={"S": ["B"]}, sigma_A=3.0)
    assert ph.mass_fraction(cx, "S") == pytest.approx(16 / 37)
    vol = ph.state_volume(cx, {"S"}, box=32, pixel_size=2.0)
    assert float(vol.sum()) == pytest.approx(37.0, rel=1e-4)
    # the density's centre is the Z-weighted mean of the atoms, relative to the centre of mass
    zmean = (atoms.xyz * atoms.weights[:, None]).sum(0) / 37.0
    np.testing.assert_allclose(centroid_A(vol, 2.0), zmean, atol=0.05)
    core_only = ph.volume_from_model(path, box=32, pixel_size=2.0, sigma_A=3.0)
    torch.testing.assert_close(core_only, vol)
    # B-factor widths by default: B = 20 A^2 -> sigma = sqrt(20 / 8 pi^2) ~ 0.50, floored at 1 A
    assert np.allclose(ph.complex_from_model(path).core.sigma, 1.0)
    with pytest.raises(InputError, match="no .*atoms in chains"):
        ph.complex_from_model(path, subunits={"X": ["Z"]})
    # chain B as a hinged domain about the z axis through the file's origin: 90 degrees maps (x, y) -> (-y, x)
    hx = ph.complex_from_model(path, sigma_A=3.0, hinges={"S": (["B"], (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))})
    moved = hx.hinges["S"].at(90.0).xyz[0] + atoms.centre
    np.testing.assert_allclose(moved, [-5.0, -10.0, -4.0], atol=1e-6)
    # the same model as mmCIF (written by gemmi) reads the same
    import gemmi

    cif = tmp_path / "tiny.cif"
    gemmi.read_structure(str(path)).make_mmcif_document().write_file(str(cif))
    np.testing.assert_allclose(ph.read_model_atoms(cif).xyz, atoms.xyz, atol=1e-3)
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a model\n")
    with pytest.raises(InputError, match="bad.cif"):
        ph.read_model_atoms(bad)
