"""Stochastic hill climbing with simulated annealing (STOPGAP's scheme), several runs and consistency cleaning:
the acceptance rule, label matching across runs, and accuracy against ground truth on simulated data."""

from __future__ import annotations

import numpy as np
import pytest

from tomohet.benchmark.metrics import adjusted_rand_index, match_labels
from tomohet.data.relion5 import read_relion5
from tomohet.errors import InputError
from tomohet.methods.consistency import clean, consistency, label_permutation, match_runs
from tomohet.methods.hillclimb import (
    HillClimbAssign,
    HillClimbOptions,
    classify_hillclimb,
    counter_uniform,
    temperature_at,
)
from tomohet.simulate.datasets import simulate_preset

# ----------------------------------------------------------------------------------------- acceptance rule


def _ll(n: int = 2000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 10, (n, k)), rng.integers(0, k, n)


def test_zero_temperature_takes_a_better_class_and_never_a_worse_one():
    ll, cur = _ll()
    rows = np.arange(len(cur))
    new = HillClimbAssign(cur, temperature=0.0, seed=3).choose(rows, ll)
    improvable = (ll > ll[rows, cur][:, None]).any(1)
    assert improvable.mean() > 0.5 and (~improvable).sum() > 100
    assert (ll[rows[improvable], new[improvable]] > ll[rows[improvable], cur[improvable]]).all()
    assert (new[~improvable] == cur[~improvable]).all()
    # the first improvement in a random order, not always the best one: both happen
    best = ll.argmax(1)
    several = (ll > ll[rows, cur][:, None]).sum(1) >= 2
    assert 0.2 < (new[several] == best[several]).mean() < 0.9
    # a single better class is always found
    ll1 = np.zeros((500, 4))
    ll1[np.arange(500), (cur[:500] + 1) % 4] = 1.0
    assert (HillClimbAssign(cur, 0.0).choose(np.arange(500), ll1) == (cur[:500] + 1) % 4).all()
    post = HillClimbAssign(cur, 0.0, seed=3)(rows, ll)
    assert post.shape == ll.shape and (post.sum(1) == 1).all() and (post.argmax(1) == new).all()


def test_high_temperature_accepts_worse_classes_sometimes():
    k = 4
    n = 4000
    cur = np.zeros(n, dtype=int)
    ll = np.tile(np.array([0.0, -1.0, -2.0, -3.0]), (n, 1))  # the current class is the best for everyone
    rows = np.arange(n)
    assert (HillClimbAssign(cur, 0.0).choose(rows, ll) == 0).all()
    # STOPGAP's rule: each visited downhill candidate is taken with probability T -> 1 - (1 - T)^(K-1) move
    moved = (HillClimbAssign(cur, 0.3, acceptance="stopgap").choose(rows, ll) != 0).mean()
    assert abs(moved - (1 - 0.7 ** (k - 1))) < 0.03
    # Metropolis: worse classes are taken less often than slightly worse ones
    new = HillClimbAssign(cur, 1.0, acceptance="metropolis", scale=1.0).choose(rows, ll)
    frac = np.bincount(new, minlength=k) / n
    assert 0.3 < frac[0] < 0.9 and frac[1] > frac[2] > frac[3] > 0


def test_rule_is_deterministic_and_independent_of_batching():
    ll, cur = _ll()
    rows = np.arange(len(cur))
    rule = HillClimbAssign(cur, 0.2, seed=5, run=1, iteration=2)
    a = rule.choose(rows, ll)
    assert (a == HillClimbAssign(cur, 0.2, seed=5, run=1, iteration=2).choose(rows, ll)).all()
    parts = [rule.choose(rows[s], ll[s]) for s in (slice(0, 7), slice(7, 1500), slice(1500, None))]
    assert (np.concatenate(parts) == a).all()
    shuffled = np.random.default_rng(0).permutation(len(rows))
    assert (rule.choose(rows[shuffled], ll[shuffled]) == a[shuffled]).all()
    for other in (dict(seed=6), dict(run=2), dict(iteration=3)):
        kw = dict(seed=5, run=1, iteration=2) | other
        assert (HillClimbAssign(cur, 0.2, **kw).choose(rows, ll) != a).mean() > 0.05
    u = counter_uniform((1, 2, 3), np.arange(100000), 2)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u.T)[0, 1]) < 0.02


def test_cooling_schedules():
    opt = HillClimbOptions(n_iter=10, temperature=0.2)
    assert [round(temperature_at(opt, i), 3) for i in range(7)] == [0.2, 0.16, 0.12, 0.08, 0.04, 0.0, 0.0]
    geo = HillClimbOptions(temperature=0.2, cooling="geometric", cooling_factor=0.5)
    assert temperature_at(geo, 2) == pytest.approx(0.05) and temperature_at(geo, 20) == 0.0
    assert temperature_at(HillClimbOptions(temperature=0.0), 0) == 0.0


# ----------------------------------------------------------------------------------------- consistency


def test_match_runs_and_consistency_with_permuted_labels():
    ref = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    perm = np.array([2, 0, 1])  # run 1 calls class 0 "2", class 1 "0", class 2 "1"
    run1 = perm[ref]
    run2 = perm[ref].copy()
    run2[[2, 9]] = [0, 2]  # two particles disagree in run 2
    assert (label_permutation(ref, run1)[run1] == ref).all()
    aligned = match_runs([ref, run1, run2])
    assert (aligned[0] == ref).all() and (aligned[1] == ref).all()
    assert (aligned[2] != ref).sum() == 2
    cons, frac = consistency([ref, run1, run2])
    assert (cons == ref).all()
    assert np.allclose(frac, [1, 1, 2 / 3, 1, 1, 1, 1, 1, 1, 2 / 3])
    assert (clean(cons, frac, 1.0) == [0, 1, 3, 4, 5, 6, 7, 8]).all()
    assert len(clean(cons, frac, 0.5)) == 10
    # a tie between two runs goes to the preferred run
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert (consistency([a, b])[0] == a).all() and (consistency([a, b], tie_break=1)[0] == b).all()
    # more classes in one run than in the reference: unmatched classes keep a free name
    extra = match_runs([np.array([0, 0, 1, 1]), np.array([3, 3, 1, 2])], 4)[1]
    assert (extra[:2] == 0).all() and 1 in extra[2:] and extra[2] != extra[3]
    with pytest.raises(InputError, match="run 1"):
        consistency([ref, ref[:5]])
    with pytest.raises(InputError, match="threshold"):
        clean(cons, frac, 1.5)


# ----------------------------------------------------------------------------------------- on simulated data


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    layout, truth = simulate_preset("smoke", out, seed=1, n_particles=120)
    return read_relion5(layout.optimisation_set), truth["state"].to_numpy()


def test_hillclimb_three_runs_recovers_states_and_consistency_flags_errors(smoke):
    ds, truth = smoke
    opt = HillClimbOptions(n_classes=2, n_iter=4, n_runs=3, init="pca", temperature=0.1, cooling_iters=1, seed=0)
    res = classify_hillclimb(ds, opt)
    assert adjusted_rand_index(truth, res.labels) >= 0.85
    runs = res.extra["run_labels"]
    assert runs.shape == (3, ds.n_particles)
    assert all(adjusted_rand_index(truth, r) >= 0.8 for r in runs)
    c = res.extra["consistency"]
    assert c.shape == (ds.n_particles,) and (c >= 2 / 3 - 1e-9).all() and (c == 1).mean() >= 0.8
    assert np.allclose(res.posteriors.max(1), c) and (res.posteriors.argmax(1) == res.labels).all()
    m = match_labels(truth, res.labels)
    wrong = np.array([m.get(int(p)) != t for t, p in zip(truth, res.labels, strict=True)])
    kept = clean(res.labels, c, 1.0)
    assert wrong[kept].mean() <= wrong.mean()
    assert res.volumes.shape == (2, ds.box, ds.box, ds.box) and float(res.volumes.abs().sum()) > 0
    assert {e["run"] for e in res.log} == {0, 1, 2} and all(e["temperature"] <= 0.1 for e in res.log)
    assert 0 < res.extra["variability_mask_fraction"] < 1  # em2d's variability mask confines the differences


def test_labels_do_not_depend_on_partitioning(smoke):
    ds, _ = smoke
    kw = dict(n_classes=2, n_iter=2, n_runs=1, temperature=0.3, cooling_iters=4, seed=2)
    a = classify_hillclimb(ds, HillClimbOptions(partition_size=64, **kw))
    b = classify_hillclimb(ds, HillClimbOptions(partition_size=512, **kw))
    assert a.log[-1]["changes"] > 0
    assert (a.labels == b.labels).all()
    assert np.allclose(a.volumes.numpy(), b.volumes.numpy(), atol=1e-4)


def test_cli_hillclimb_writes_consistency(smoke, tmp_path):
    import starfile
    from typer.testing import CliRunner

    from tomohet.cli.main import app

    star = smoke[0].source_path  # the optimisation set the dataset was read from
    r = CliRunner().invoke(app, ["classify", str(star), "--out", str(tmp_path / "h"), "-K", "2", "--method",
                                 "hillclimb", "--runs", "2", "--iterations", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    parts = starfile.read(tmp_path / "h" / "particles.star")["particles"]
    assert parts["tomohetConsistency"].between(0, 1).all() and (parts["tomohetConsistency"] >= 0.5).all()
    assert set(parts["rlnClassNumber"]) == {1, 2}
