"""Metrics against ground truth: hand-made cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tomohet.benchmark.metrics import (
    adjusted_rand_index,
    confusion_matrix,
    continuous_report,
    discrete_report,
    knn_preservation,
    latent_spearman,
    map_fsc,
    match_labels,
    matched_accuracy,
    normalized_mutual_information,
    per_class_fsc,
    population_error,
    rare_state_f1,
)
from tomohet.errors import InputError


def test_perfect_and_permuted_labels_score_one():
    true = np.repeat([0, 1, 2, 3], 25)
    for pred in (true, np.array([2, 0, 3, 1])[true], np.array(["a", "b", "c", "d"])[true]):
        assert adjusted_rand_index(true, pred) == pytest.approx(1.0)
        assert normalized_mutual_information(true, pred) == pytest.approx(1.0)
        assert matched_accuracy(true, pred) == pytest.approx(1.0)
        assert population_error(true, pred)["max_abs"] == pytest.approx(0.0)
    assert match_labels(true, np.array([2, 0, 3, 1])[true]) == {2: 0, 0: 1, 3: 2, 1: 3}


@pytest.mark.parametrize("k", [2, 4, 5])
def test_random_labels_score_chance(k):
    rng = np.random.default_rng(1)
    true = rng.integers(0, k, 10_000)
    pred = rng.integers(0, k, 10_000)
    assert abs(adjusted_rand_index(true, pred)) < 0.02
    assert normalized_mutual_information(true, pred) < 0.01
    assert matched_accuracy(true, pred) == pytest.approx(1 / k, abs=0.02)


def test_known_confusion_matrix_accuracy():
    # true state 0: 8 in class 0, 2 in class 1; state 1: 3 in class 0, 7 in class 1; state 2: 5 in class 2
    true = np.array([0] * 10 + [1] * 10 + [2] * 5)
    pred = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 7 + [2] * 5)
    c, states, classes = confusion_matrix(true, pred)
    np.testing.assert_array_equal(c, [[8, 2, 0], [3, 7, 0], [0, 0, 5]])
    assert matched_accuracy(true, pred) == pytest.approx((8 + 7 + 5) / 25)
    # swap the class names of 0 and 1: the matching must follow, not the names
    assert matched_accuracy(true, np.array([1, 0, 2])[pred]) == pytest.approx(20 / 25)
    pe = population_error(true, pred)["per_state"]
    assert pe["0"]["pred_fraction"] == pytest.approx(11 / 25)
    assert pe["0"]["error"] == pytest.approx(11 / 25 - 10 / 25)
    assert pe["1"]["error"] == pytest.approx(9 / 25 - 10 / 25)
    assert pe["2"]["error"] == pytest.approx(0.0)


def test_rectangular_matching_more_classes_than_states():
    # 4 true states of 10; K = 5: state 3 is split 6/4 over classes 3 and 4
    true = np.repeat([0, 1, 2, 3], 10)
    pred = true.copy()
    pred[30:34] = 4
    assert matched_accuracy(true, pred) == pytest.approx(36 / 40)
    m = match_labels(true, pred)
    assert len(m) == 4 and m[3] == 3 and 4 not in m
    rep = discrete_report(true, pred)
    assert rep["n_states"] == 4 and rep["n_classes"] == 5
    assert rep["population_error"]["per_state"]["3"]["error"] == pytest.approx(6 / 40 - 10 / 40)
    json.dumps(rep)  # JSON-ready

    # fewer classes than states: an unmatched state counts as wrong and has predicted fraction 0
    pred3 = np.minimum(true, 2)
    assert matched_accuracy(true, pred3) == pytest.approx(30 / 40)
    pe = population_error(true, pred3)["per_state"]
    assert sum(v["pred_fraction"] == 0.0 for v in pe.values()) == 1


def test_rare_state_f1():
    # 950 common (state 0), 50 rare (state 1); class 1 holds 40 rare + 10 common, class 0 the rest
    true = np.array([0] * 950 + [1] * 50)
    pred = np.zeros(1000, dtype=int)
    pred[950:990] = 1
    pred[:10] = 1
    r = rare_state_f1(true, pred, 1)
    precision, recall = 40 / 50, 40 / 50
    assert r["class"] == 1
    assert r["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert discrete_report(true, pred)["rarest_state_f1"] == pytest.approx(0.8)
    # the rare state lumped with everything: the best-overlapping class is the big one, F1 is poor
    assert rare_state_f1(true, np.zeros(1000, dtype=int), 1)["f1"] == pytest.approx(2 * 0.05 / 1.05)
    assert rare_state_f1(true, pred, 7)["f1"] == 0.0


def test_spearman_monotone_third_component_and_negated():
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 30, 500)
    z = rng.normal(size=(500, 4))
    z[:, 2] = -np.exp(t / 10)  # monotone decreasing in the 3rd component
    s = latent_spearman(t, z)
    assert s["rho_abs"] == pytest.approx(1.0) and s["component"] == 2 and s["rho"] == pytest.approx(-1.0)
    # a perfect 4th component is outside the top 3 and does not count
    z2 = rng.normal(size=(500, 4))
    z2[:, 3] = t
    assert latent_spearman(t, z2)["rho_abs"] < 0.2
    assert latent_spearman(t, torch.tensor(t))["rho_abs"] == pytest.approx(1.0)  # 1D latent, torch input


def test_spearman_random_latent_is_small():
    rng = np.random.default_rng(3)
    t = rng.uniform(size=5000)
    assert latent_spearman(t, rng.normal(size=(5000, 3)))["rho_abs"] < 0.05


def test_knn_preservation():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1500, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert knn_preservation(x, 2.5 * x @ q + 7.0) == pytest.approx(1.0)  # similarity transform of the truth
    shuffled = x[rng.permutation(len(x))]
    assert knn_preservation(x, shuffled) < 0.02  # chance is k / (N - 1) ~ 0.007
    # 1D truth embedded on a curve in 2D keeps neighbourhoods
    t = np.sort(rng.uniform(0, 1, 1000))
    curve = np.stack([np.cos(2 * t), np.sin(2 * t)], axis=1)
    assert knn_preservation(t, curve, k=5) > 0.95
    rep = continuous_report(t, curve)
    assert rep["spearman_abs"] == pytest.approx(1.0) and rep["k"] == 10
    json.dumps(rep)


def test_map_fsc_identical_and_noisy_maps():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(32, 32, 32, generator=g)
    m = map_fsc(v, v.clone(), pixel_size=10.0)
    assert m["auc"] == pytest.approx(1.0, abs=1e-6)
    assert m["resolution_0.143"] == pytest.approx(20.0) and m["resolution_0.5"] == pytest.approx(20.0)
    # map vs map + independent noise of equal power: FSC ~ 1/sqrt(2) in every shell
    noisy = map_fsc(v, v + torch.randn(32, 32, 32, generator=g), pixel_size=10.0)
    assert noisy["auc"] == pytest.approx(2**-0.5, abs=0.03)
    assert noisy["resolution_0.143"] == pytest.approx(20.0)
    # per-class FSC: classes given in swapped order are matched to the right truths
    truth = torch.stack([v, torch.randn(32, 32, 32, generator=g)])
    res = per_class_fsc(truth.flip(0), truth, pixel_size=10.0)
    assert [r["truth"] for r in res] == [1, 0] and all(r["auc"] > 0.999 for r in res)
    with pytest.raises(InputError):
        map_fsc(v, v[:16], 10.0)


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match="true has 3 labels but pred has 2"):
        adjusted_rand_index([0, 1, 1], [0, 1])
    with pytest.raises(InputError, match="latent"):
        latent_spearman(np.arange(5.0), np.zeros((4, 2)))
