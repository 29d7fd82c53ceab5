"""Adding confirmed-good images to fitted detectors (the operator-feedback update)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectmap.data.io import read_image
from defectmap.data.mvtec import load_category
from defectmap.detectors import create_detector, load_detector
from defectmap.detectors.coreset import greedy_cover

SIZE = 128


@pytest.fixture(scope="module")
def images(synthetic_root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = load_category(synthetic_root, "synthetic")
    train = [read_image(s.path) for s in data.train]
    return train[:16], train[16:]


def pasted(image: np.ndarray, seed: int) -> np.ndarray:
    """A good image with a 40 x 40 patch of noise: far from every training patch."""
    out = image.copy()
    out[40:80, 50:90] = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), np.uint8)
    return out


def test_greedy_cover_stops_at_the_radius() -> None:
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.normal(size=(300, 5)).astype(np.float32))
    start = torch.full((300,), 10.0)
    picked = greedy_cover(points, start, radius=1.0)
    centres = points[torch.from_numpy(picked)]
    nearest = torch.cdist(points, centres).min(1).values
    assert float(nearest.max()) <= 1.0 + 1e-5  # every point is covered ...
    assert 1 < len(picked) < 300 and len(set(picked.tolist())) == len(picked)
    # ... and greedy: each pick was the farthest point at its step, farther than the radius.
    covered = greedy_cover(points, torch.full((300,), 0.5), radius=1.0)
    assert covered.size == 0  # already within the radius: nothing to add


def test_patchcore_add_good_clears_a_false_alarm(images) -> None:
    train, held = images
    detector = create_detector("patchcore", input_size=SIZE, coreset_ratio=0.1).fit(train)
    bank_before = detector.memory_bank_.shape[0]
    reference = detector.predict(held[:3])
    sticker = pasted(held[0], 1)
    before = detector.predict([sticker])
    radius = float(np.quantile(np.concatenate([m.ravel() for m in reference.maps]), 0.999))
    assert before.maps[0].max() > 2 * radius  # flagged: far outside the good pixels

    added = detector.add_good([sticker], radius=radius)
    assert 0 < added < SIZE // 8 * SIZE // 8  # a few patches, not the whole image
    assert detector.memory_bank_.shape[0] == bank_before + added
    after = detector.predict([sticker])
    assert after.maps[0].max() <= radius * (1 + 1e-4)
    # Other images' patch distances cannot grow, so neither can their maps (a smoothed,
    # upsampled copy of them).
    again = detector.predict(held[:3])
    for new, old in zip(again.maps, reference.maps, strict=True):
        assert np.all(new <= old + 1e-5)
    # A second image that differs the same way is covered more cheaply.
    assert detector.add_good([pasted(held[1], 2)], radius=radius) <= added


def test_padim_add_good_matches_a_fit_on_all_images(images, tmp_path: Path) -> None:
    train, held = images
    extra = held[:4]
    updated = create_detector("padim", input_size=SIZE).fit(train)
    updated.save(tmp_path)
    updated = load_detector(tmp_path)  # n_samples survives save -> load
    assert updated.add_good(extra) == len(extra)
    full = create_detector("padim", input_size=SIZE).fit(train + extra)
    assert updated.n_samples_ == full.n_samples_ == len(train) + len(extra)
    torch.testing.assert_close(updated.mean_, full.mean_, rtol=1e-5, atol=1e-5)
    a, b = updated.predict(held[4:]), full.predict(held[4:])
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3)
    np.testing.assert_allclose(np.stack(a.maps), np.stack(b.maps), rtol=1e-3, atol=1e-3)
