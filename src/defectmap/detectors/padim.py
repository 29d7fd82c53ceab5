"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2020).

Fit: at every position of the feature grid, a multivariate Gaussian over a random subset of
the concatenated backbone channels (strides 4, 8 and 16, all brought to one grid), with
covariance ``Sigma + eps * I`` (Eq. 1). Predict: the Mahalanobis distance of each test
patch to the Gaussian at its position (Eq. 2) is the map; it is upsampled, smoothed
(sigma = 4 pixels at the input's scale) and resized to native size; the image score is the
map's maximum.

Deviation from the paper: the grid is the stride-8 grid (the stride-4 stage is
average-pooled by 2) rather than stride 4. This divides the stored inverse covariances by
four (32 x 32 x 100 x 100 float32 = 41 MB at 256 px instead of 164 MB) and the Mahalanobis
work likewise; the final Gaussian smoothing is wider than the lost resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectmap.detectors.base import (
    Detector,
    ParamError,
    check_array,
    check_number,
    register_detector,
)
from defectmap.features.backbones import DEFAULT_BACKBONE, load_backbone
from defectmap.features.preprocess import ImageInput
from defectmap.progress import ProgressCallback

_FIT_BATCH = 1  # measured: batch 1 is fastest per image on a 2-core CPU (see base)


@register_detector
class PaDiM(Detector):
    """PaDiM anomaly detector.

    Parameters
    ----------
    backbone : backbone name (offline ``efficientnet_lite0`` by default, or a timm model).
    input_size : side of the square network input in pixels (no crop).
    n_features : size of the random channel subset (the paper's d; all channels if larger).
    eps : covariance regularisation, ``Sigma + eps * I``.
    sigma : Gaussian smoothing of the map, in pixels at ``input_size``.
    random_state : seed of the channel subset.
    """

    name = "padim"
    _fitted_attr = "inv_covariance_"
    #: Images behind the statistics (None: a model saved before it was recorded).
    n_samples_: int | None = None
    _strides = (4, 8, 16)
    _score_is_map_max = True

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        input_size: int = 256,
        n_features: int = 100,
        eps: float = 0.01,
        sigma: float = 4.0,
        random_state: int = 0,
    ) -> None:
        self.backbone = backbone
        self.input_size = input_size
        self.n_features = n_features
        self.eps = eps
        self.sigma = sigma
        self.random_state = random_state

    def _embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stride-4/8/16 maps on the stride-8 grid, channel subset: (B, d, h, w)."""
        size = (int(features[1].shape[-2]), int(features[1].shape[-1]))
        parts = []
        for fmap in features:
            if fmap.shape[-2] > size[0]:
                fmap = F.adaptive_avg_pool2d(fmap, size)
            elif fmap.shape[-2:] != size:
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            parts.append(fmap)
        emb = torch.cat(parts, dim=1)
        return emb[:, self.channel_indices_]

    def _check_params(self) -> None:
        super()._check_params()
        check_number(self.n_features, "n_features", int, low=1)
        check_number(self.eps, "eps", float, low=0.0)
        check_number(self.sigma, "sigma", float, low=0.0)
        check_number(self.random_state, "random_state", int, low=0)

    def fit(
        self, images: Sequence[ImageInput], progress: ProgressCallback | None = None
    ) -> PaDiM:
        """Estimate the per-position Gaussians from defect-free images; return self."""
        self._check_params()
        if len(images) < 2:
            raise ValueError("PaDiM needs at least two images to estimate a covariance")
        rng = np.random.default_rng(self.random_state)
        backbone = self._backbone()
        n_channels = sum(backbone.channels)
        d = min(self.n_features, n_channels)
        self.channel_indices_ = torch.from_numpy(np.sort(rng.choice(n_channels, d, replace=False)))
        total: torch.Tensor | None = None
        outer: torch.Tensor | None = None
        n = 0
        with torch.inference_mode():
            # extract -> accumulate sums in float64 (one pass, bounded memory)
            for emb in self._extract(images, _FIT_BATCH, "PaDiM features", self._embed,
                                     progress):
                x = emb.flatten(2).permute(2, 0, 1).double()          # (P, B, d)
                batch_outer = torch.einsum("pbi,pbj->pij", x, x)
                total = x.sum(1) if total is None else total + x.sum(1)
                outer = batch_outer if outer is None else outer + batch_outer
                n += x.shape[1]
            assert total is not None and outer is not None
            # estimate: mean, unbiased covariance + eps I, precomputed inverse (Eq. 1)
            mean = total / n
            cov = (outer - n * torch.einsum("pi,pj->pij", mean, mean)) / (n - 1)
            cov += self.eps * torch.eye(d, dtype=cov.dtype)
            self.mean_ = mean.float().contiguous()
            self.inv_covariance_ = torch.linalg.inv(cov).float().contiguous()
            self.grid_shape_ = tuple(emb.shape[-2:])
            self.n_samples_ = n
        return self

    def add_good(
        self,
        images: Sequence[ImageInput],
        radius: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Fold more defect-free images into the per-position Gaussians; return how many.

        Used when an operator confirms that a flagged part is good (a false alarm). The
        stored mean and inverse covariance give back the sums of :meth:`fit` (the
        covariance is the float64 inverse of the stored float32 inverse, minus ``eps I``),
        the new images' features are added to them, and mean and inverse covariance are
        re-estimated over all ``n_samples_ + len(images)`` images, as a fit on all of them
        would (up to float32 rounding of the stored inverse; see the tests for the
        agreement). ``radius`` is not used: a Gaussian takes every image in. Recalibrate
        afterwards.
        """
        self._check_fitted()
        if self.n_samples_ is None:
            raise ValueError("this PaDiM model was saved without n_samples; refit it to add "
                             "images")
        if len(images) == 0:
            return 0
        n = int(self.n_samples_)
        mean = self.mean_.double()
        d = mean.shape[1]
        eye = torch.eye(d, dtype=torch.float64)
        cov = torch.linalg.inv(self.inv_covariance_.double()) - self.eps * eye
        total = n * mean
        outer = (n - 1) * cov + n * torch.einsum("pi,pj->pij", mean, mean)
        added = 0
        with torch.inference_mode():
            for emb in self._extract(images, _FIT_BATCH, "PaDiM features", self._embed,
                                     progress):
                x = emb.flatten(2).permute(2, 0, 1).double()          # (P, B, d)
                total = total + x.sum(1)
                outer = outer + torch.einsum("pbi,pbj->pij", x, x)
                added += x.shape[1]
            n += added
            mean = total / n
            cov = (outer - n * torch.einsum("pi,pj->pij", mean, mean)) / (n - 1)
            self.mean_ = mean.float().contiguous()
            self.inv_covariance_ = torch.linalg.inv(cov + self.eps * eye).float().contiguous()
            self.n_samples_ = n
        return added

    def _predict_batch(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self._embed(features)
        b, d, h, w = emb.shape
        if (h, w) != tuple(self.grid_shape_):
            raise ValueError(f"feature grid {(h, w)} differs from the fitted {self.grid_shape_}")
        diff = emb.flatten(2).permute(2, 0, 1) - self.mean_[:, None, :]     # (P, B, d)
        # Eq. 2: M(x) = sqrt((x - mu)^T Sigma^-1 (x - mu)) at each position.
        left = torch.bmm(diff, self.inv_covariance_)                        # (P, B, d)
        dist2 = (left * diff).sum(2).clamp_(min=0.0)                        # (P, B)
        grid = dist2.sqrt().T.reshape(b, h, w)
        return grid.flatten(1).amax(1), grid

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "channel_indices": self.channel_indices_.numpy(),
            "mean": self.mean_.numpy(),
            "inv_covariance": self.inv_covariance_.numpy(),
        }
        return arrays, {"grid_shape": list(self.grid_shape_), "n_samples": self.n_samples_}

    def _set_state(self, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        grid = extra.get("grid_shape")
        if (not isinstance(grid, list) or len(grid) != 2
                or not all(isinstance(v, int) and v >= 1 for v in grid)):
            raise ParamError("state.grid_shape", f"expected two positive integers, got {grid!r}")
        n_channels = sum(load_backbone(self.backbone, self._strides,
                                       allow_download=False).channels)
        d = min(int(self.n_features), n_channels)
        p = grid[0] * grid[1]
        check_array(arrays["channel_indices"], "channel_indices", (d,), np.int64)
        idx = arrays["channel_indices"]
        if idx.min() < 0 or idx.max() >= n_channels:
            raise ParamError("channel_indices", f"must lie in [0, {n_channels})")
        check_array(arrays["mean"], "mean", (p, d))
        check_array(arrays["inv_covariance"], "inv_covariance", (p, d, d))
        self.mean_ = torch.from_numpy(np.ascontiguousarray(arrays["mean"]))
        self.inv_covariance_ = torch.from_numpy(np.ascontiguousarray(arrays["inv_covariance"]))
        self.channel_indices_ = torch.from_numpy(np.ascontiguousarray(idx))
        # None for models saved before add_good existed (they cannot add images).
        n_samples = extra.get("n_samples")
        check_number(n_samples, "state.n_samples", int, low=2, optional=True)
        self.n_samples_ = None if n_samples is None else int(n_samples)
        self.grid_shape_ = (grid[0], grid[1])
