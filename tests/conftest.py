"""Shared fixtures: paths to the real-format data in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WARPTOOLS = SHARED / "warptools_relion5"
WARPTOOLS_OPTSET = WARPTOOLS / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star"
WARPTOOLS_REF = WARPTOOLS / "warptools_test_box-32_angpix-12_reconstruct.mrc"
RIBOSOME = SHARED / "cryodrgn_sta_ribosome"
RIBOSOME_STAR = RIBOSOME / "sta_testing_bin8.star"


@pytest.fixture(scope="session")
def warptools_optset() -> Path:
    if not WARPTOOLS_OPTSET.exists():
        pytest.skip("../shared/data/warptools_relion5 not present")
    return WARPTOOLS_OPTSET


@pytest.fixture(scope="session")
def ribosome_star() -> Path:
    if not RIBOSOME_STAR.exists():
        pytest.skip("../shared/data/cryodrgn_sta_ribosome not present")
    return RIBOSOME_STAR
