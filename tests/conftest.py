"""Shared fixtures: a small synthetic MVTec-layout dataset and the real bottle data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's read-only shared folder sits beside the checkout (CI lays it there too);
# DEFECTMAP_SHARED points elsewhere.
SHARED = Path(os.environ.get("DEFECTMAP_SHARED", REPO.parent / "shared"))
BOTTLE_DATA = SHARED / "data" / "mvtec_ad"
METRIC_FIXTURES = SHARED / "fixtures" / "metrics"
LOCO_FIXTURES = SHARED / "fixtures" / "loco"


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


@pytest.fixture(scope="session")
def metric_fixtures() -> Path:
    """Folder of maps/masks with values from the official MVTec code; skips when missing."""
    if not (METRIC_FIXTURES / "bottle_225.npz").is_file():
        pytest.skip(f"metric reference fixtures not found at {METRIC_FIXTURES}")
    return METRIC_FIXTURES


@pytest.fixture(scope="session")
def loco_fixture() -> Path:
    """MVTec LOCO AD layout with values from the official LOCO code; skips when missing."""
    if not (LOCO_FIXTURES / "reference.json").is_file():
        pytest.skip(f"LOCO reference fixture not found at {LOCO_FIXTURES}")
    return LOCO_FIXTURES


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL server started for this run on 127.0.0.1 (see ``tests/pg_server.py``).

    Skips with the reason when PostgreSQL cannot be started; under CI (``CI=true``, where
    ``make test`` installs it) that is a failure instead.
    """
    import pg_server as pg

    try:
        server = pg.start()
    except pg.Unavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ``--db`` value: a SQLite file, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    return str(request.getfixturevalue("pg_server").new_database())
