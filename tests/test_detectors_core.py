"""Compute cores of the detectors against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from defectmap.detectors.base import gaussian_blur, maps_to_native
from defectmap.detectors.coreset import StreamingCoreset, greedy_coreset
from defectmap.detectors.neighbors import (
    NearestNeighborIndex,
    nearest_neighbors,
    nearest_neighbors_faiss,
)


def _points(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


@pytest.mark.parametrize("k", [1, 4])
def test_chunked_nearest_neighbors_match_brute_force(k: int) -> None:
    queries, bank = _points(257, 12, 1), _points(300, 12, 2)
    dist, idx = nearest_neighbors(queries, bank, k, chunk_size=50)
    full = torch.cdist(queries.double(), bank.double())
    ref_dist, ref_idx = torch.topk(full, k, dim=1, largest=False)
    assert dist.shape == (257, k) and idx.shape == (257, k)
    np.testing.assert_allclose(dist.numpy(), ref_dist.numpy(), rtol=1e-4, atol=1e-4)
    assert (idx == ref_idx).float().mean() > 0.99  # ties aside, same neighbours
    f_dist, f_idx = nearest_neighbors_faiss(queries, bank, k)
    np.testing.assert_allclose(f_dist.numpy(), ref_dist.numpy(), rtol=1e-4, atol=1e-4)
    for use_faiss in (True, False):
        index = NearestNeighborIndex(bank, use_faiss=use_faiss)
        assert index.backend == ("faiss" if use_faiss else "torch")
        i_dist, i_idx = index.search(queries, k)
        np.testing.assert_allclose(i_dist.numpy(), ref_dist.numpy(), rtol=1e-4, atol=1e-4)
        assert (i_idx == ref_idx).float().mean() > 0.99


def _reference_greedy(x: np.ndarray, n_select: int, start: int) -> list[int]:
    chosen = [start]
    min_d = ((x - x[start]) ** 2).sum(1)
    for _ in range(1, n_select):
        nxt = int(np.argmax(min_d))
        chosen.append(nxt)
        min_d = np.minimum(min_d, ((x - x[nxt]) ** 2).sum(1))
    return chosen


def test_greedy_coreset_matches_reference_without_projection() -> None:
    x = _points(400, 6, 3).double().float()
    rng = np.random.default_rng(5)
    start = int(np.random.default_rng(5).integers(400))
    got = greedy_coreset(x, 25, rng, projection_dim=None)
    assert got.tolist() == _reference_greedy(x.numpy().astype(np.float64), 25, start)
    assert len(set(got.tolist())) == 25


def test_pooled_rounds_make_the_textbook_choices() -> None:
    """A small pool forces many rounds; every choice is still the textbook farthest point."""
    x = _points(3000, 8, 9)
    start = int(np.random.default_rng(2).integers(3000))
    got = greedy_coreset(x, 200, np.random.default_rng(2), projection_dim=None, pool_size=16)
    assert got.tolist() == _reference_greedy(x.numpy().astype(np.float64), 200, start)


def _radius(x: torch.Tensor, bank: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), bank.double()).min(1).values.max())


def test_streaming_coreset_single_chunk_is_exact_greedy() -> None:
    x = _points(900, 10, 11)
    stream = StreamingCoreset(900, 40, 10, np.random.default_rng(4), projection_dim=None,
                              chunk_size=1000)
    for start in range(0, 900, 97):  # uneven batches
        stream.add(x[start : start + 97])
    bank = stream.result()
    idx = greedy_coreset(x, 40, np.random.default_rng(4), projection_dim=None)
    torch.testing.assert_close(bank, x[torch.from_numpy(idx)])


def test_streaming_coreset_many_chunks_covers_like_exact_greedy() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16)) * 10
    x = torch.from_numpy(
        (centres[rng.integers(0, 40, 6000)] + rng.standard_normal((6000, 16))).astype(np.float32)
    )
    exact = x[torch.from_numpy(greedy_coreset(x, 60, np.random.default_rng(1), None))]
    stream = StreamingCoreset(6000, 60, 16, np.random.default_rng(1), None, chunk_size=1000,
                              oversample=4.0)
    for start in range(0, 6000, 250):
        stream.add(x[start : start + 250])
    bank = stream.result()
    assert bank.shape == (60, 16)
    assert len({tuple(r) for r in bank.tolist()}) == 60  # distinct rows of x
    r_exact, r_stream = _radius(x, exact), _radius(x, bank)
    # Every cluster keeps a centre in both (radius below half the cluster spacing, ~56)...
    assert r_exact < 20.0 and r_stream < 20.0
    # ... and the two-stage radius stays within 25 % of exact greedy's.
    assert r_stream <= 1.25 * r_exact


def test_streaming_coreset_checks_its_counts() -> None:
    stream = StreamingCoreset(10, 3, 4, np.random.default_rng(0), None, chunk_size=4)
    stream.add(_points(6, 4))
    with pytest.raises(ValueError, match="announced 10"):
        stream.result()
    with pytest.raises(ValueError, match="more than the announced 10"):
        stream.add(_points(5, 4))
    with pytest.raises(ValueError, match="n_select"):
        StreamingCoreset(10, 11, 4, np.random.default_rng(0))


def test_greedy_coreset_covers_clusters_and_respects_bounds() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 32)) * 50
    x = torch.from_numpy(
        (centres[rng.integers(0, 5, 1000)] + rng.standard_normal((1000, 32))).astype(np.float32)
    )
    idx = greedy_coreset(x, 5, np.random.default_rng(1), projection_dim=16)
    labels = np.argmin(((x.numpy()[idx, None, :] - centres[None]) ** 2).sum(2), axis=1)
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]  # one centre per cluster
    with pytest.raises(ValueError):
        greedy_coreset(x, 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        greedy_coreset(x, 1001, np.random.default_rng(0))


def test_gaussian_blur_matches_scipy_mirror() -> None:
    maps = _points(2 * 40 * 30, 1, 4).reshape(2, 40, 30)
    got = gaussian_blur(maps, 4.0).numpy()
    ref = np.stack([gaussian_filter(m, 4.0, mode="mirror", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_maps_to_native_sizes_and_constant_map() -> None:
    grid = torch.full((2, 4, 4), 3.0)
    out = maps_to_native(grid, [(50, 70), (9, 5)], 32, 4.0)
    assert [m.shape for m in out] == [(50, 70), (9, 5)]
    assert all(m.dtype == np.float32 for m in out)
    np.testing.assert_allclose(out[0], 3.0, rtol=1e-6)


@pytest.mark.parametrize("sigma", [4.0, 0.0])
def test_maps_to_native_equals_upsample_blur_resize(sigma: float) -> None:
    """The matrix form of upsampling + blur is the interpolate-then-convolve pipeline."""
    import torch.nn.functional as F

    grid = _points(2 * 5 * 7, 1, 8).reshape(2, 5, 7).abs()
    sizes = [(50, 70), (33, 21)]
    got = maps_to_native(grid, sizes, 40, sigma)
    up = F.interpolate(grid.unsqueeze(1), size=(40, 40), mode="bilinear", align_corners=False)
    up = gaussian_blur(up.squeeze(1), sigma)
    for i, (h, w) in enumerate(sizes):
        ref = F.interpolate(up[i][None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(got[i], ref, rtol=1e-5, atol=1e-6)


def test_padim_mahalanobis_matches_numpy() -> None:
    from defectmap.detectors import PaDiM

    rng = np.random.default_rng(0)
    d, h, w = 5, 2, 3
    a = rng.standard_normal((h * w, d, d))
    inv = np.einsum("pij,pkj->pik", a, a) + np.eye(d)
    mean = rng.standard_normal((h * w, d))
    det = PaDiM(n_features=d)
    det._set_state(
        {"mean": mean.astype(np.float32), "inv_covariance": inv.astype(np.float32),
         "channel_indices": np.array([0, 2, 3, 6, 7])},
        {"grid_shape": [h, w]},
    )
    feats = [torch.from_numpy(rng.standard_normal((2, 4, 2 * h, 2 * w)).astype(np.float32)),
             torch.from_numpy(rng.standard_normal((2, 4, h, w)).astype(np.float32))]
    scores, grid = det._predict_batch(feats)
    emb = det._embed(feats).numpy().reshape(2, d, h * w)
    diff = emb.transpose(0, 2, 1) - mean[None]
    ref = np.sqrt(np.einsum("bpi,pij,bpj->bp", diff, inv, diff)).reshape(2, h, w)
    np.testing.assert_allclose(grid.numpy(), ref, rtol=1e-4)
    np.testing.assert_allclose(scores.numpy(), ref.reshape(2, -1).max(1), rtol=1e-4)


def test_patchcore_reweighting_follows_eq7() -> None:
    from defectmap.detectors import PatchCore

    bank = _points(50, 8, 6)
    det = PatchCore(n_neighbors=3, n_features=8)
    det._set_state({"memory_bank": bank.numpy()}, {})
    queries = _points(6, 8, 7).reshape(1, 6, 8)
    dist, idx = nearest_neighbors(queries[0], bank, 1)
    patch_scores, nn_index = dist[:, 0].reshape(1, 6), idx[:, 0].reshape(1, 6)
    got = float(det._reweight(queries, patch_scores, nn_index)[0])
    best = int(patch_scores.argmax())
    m_test, m_star = queries[0, best].double(), bank[nn_index[0, best]].double()
    support = torch.argsort(torch.cdist(m_star[None], bank.double())[0])[:3]
    d = torch.linalg.vector_norm(m_test[None] - bank[support].double(), dim=1)
    expected = (1 - torch.exp(d[0]) / torch.exp(d).sum()) * patch_scores.max().double()
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert 0 < got < float(patch_scores.max())


@pytest.mark.parametrize("n_nearest", [1, 3])
def test_patchcore_patch_score_is_mean_of_nearest_distances(n_nearest: int) -> None:
    from defectmap.detectors import PatchCore

    bank = _points(50, 8, 8)
    det = PatchCore(n_features=8, n_nearest=n_nearest, image_score="patch_max")
    det._set_state({"memory_bank": bank.numpy()}, {})
    emb = _points(2 * 4 * 5, 8, 9).reshape(2, 4, 5, 8).permute(0, 3, 1, 2).contiguous()
    det._embed = lambda features: features[0]  # type: ignore[method-assign]
    scores, grid = det._predict_batch([emb])
    queries = emb.permute(0, 2, 3, 1).reshape(-1, 8).double()
    nearest = torch.cdist(queries, bank.double()).sort(dim=1).values[:, :n_nearest]
    expected = nearest.mean(dim=1).reshape(2, 4, 5)
    torch.testing.assert_close(grid.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores.double(), expected.reshape(2, -1).max(dim=1).values,
                               rtol=1e-5, atol=1e-5)


def test_patchcore_context_mixes_the_grid_with_its_wide_blur() -> None:
    from defectmap.detectors import PatchCore

    bank = _points(50, 8, 8)
    det = PatchCore(n_features=8, input_size=80, context_sigma=15.0)  # 1.5 cells of 10 px
    det._set_state({"memory_bank": bank.numpy()}, {})
    emb = _points(2 * 8 * 8, 8, 9).reshape(2, 8, 8, 8).permute(0, 3, 1, 2).contiguous()
    det._embed = lambda features: features[0]  # type: ignore[method-assign]
    scores, plain = det._predict_batch([emb])
    det.context = 0.25
    det._check_params()
    context_scores, mixed = det._predict_batch([emb])
    torch.testing.assert_close(mixed, 0.75 * plain + 0.25 * gaussian_blur(plain, 1.5),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed, plain, atol=1e-3)
    # a convex combination of averages: no value above the plain grid's maximum
    assert float(mixed.max()) <= float(plain.max()) * (1 + 1e-6)
    torch.testing.assert_close(context_scores, scores)  # the image score is the map's peak


def test_patchcore_context_is_checked() -> None:
    from defectmap.detectors import PatchCore
    from defectmap.detectors.base import ParamError

    for params, message in [({"context": 1.5}, "context: must be <= 1.0"),
                            ({"context": -0.1}, "context: must be >= 0.0"),
                            ({"context_sigma": 0}, "context_sigma: must be > 0.0")]:
        with pytest.raises(ParamError, match=message):
            PatchCore(**params)._check_params()
