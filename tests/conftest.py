"""Shared fixtures: a small synthetic MVTec-layout dataset and the real bottle data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOTTLE_DATA = REPO.parent / "shared" / "data" / "mvtec_ad"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset root holding category ``synthetic`` (object kind, 128 px, seed 0).

    24 train/good images; 16 test images: 8 good and 8 defective (scratch 2,
    contamination 2, missing_part 2, color_change 1, deformation 1) with pixel-exact
    ``ground_truth/<defect>/<stem>_mask.png`` masks. Session-scoped: do not modify it; copy
    what you need to ``tmp_path`` first.
    """
    from defectmap.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_data")
    make_synthetic_dataset(
        root, category="synthetic", kind="object", n_train=24, n_test=16, size=128, seed=0
    )
    return root


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    """The real MVTec AD root holding ``bottle`` (read-only); skips the test when missing."""
    if not (BOTTLE_DATA / "bottle" / "train").is_dir():
        pytest.skip(f"real MVTec AD bottle data not found at {BOTTLE_DATA}")
    return BOTTLE_DATA
