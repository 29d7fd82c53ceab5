"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Fit: locally aware patch features of the good images (stride-8 and stride-16 backbone stages,
each averaged over its 3x3 neighbourhood, the stride-16 map upsampled to the stride-8 grid,
concatenated) form a memory bank, subsampled by greedy k-center selection on a random
projection (:mod:`defectmap.detectors.coreset`). Predict: a test patch's anomaly score is
its mean distance to its ``n_nearest`` nearest memory entries; the map is upsampled,
smoothed with a Gaussian and resized to the image's native size; the image score is the
peak of that map.

Defaults, and the measurements behind them (development data only: MVTec AD bottle and pill,
synthetic objects and textures in RGB and grayscale; exact protocol at native resolution;
one fit each unless said; the per-category table is ``benchmarks/quality.py``'s, see the
README). Figures are image AUROC / pixel AUROC / AU-PRO@0.3.

* Cost of these defaults on the 2-core CPU (``benchmarks/quality.py --repeats 3``, medians,
  quiet machine): pill fit 17.3 s and 75 ms per image at batch 1, bottle 13.0 s and 80 ms
  (the backbone with folded BatchNorms, :func:`~defectmap.features.backbones.fold_batchnorm`,
  is about 31 ms of it and the 3-NN search about 30 ms).
* ``input_size=448`` (was 320): a 56 x 56 stride-8 grid, 2x the patches. Pill (Lite0, same
  coreset): image AUROC 0.963 at 320, 0.979-0.982 at 448, 0.978 at 512; AU-PRO 0.955 /
  0.966 / 0.965; pixel AUROC 0.972 / 0.970 / 0.964. Bottle at 448: 1.000 / 0.986 / 0.960
  (0.985 / 0.948 at 320). 512 gives nothing more for 1.3x the backbone time.
* Backbone taps: the stage outputs at strides 8 and 16 (152 channels), as before. Measured
  alternatives on pill at 448: the expanded MBConv activations (240 + 672 channels,
  randomly projected to 128 or 256, or average-pooled to 256) 0.88-0.94 image AUROC; the
  stride-32 stage (``blocks.5``, 192 channels) concatenated raised pixel AUROC to
  0.977-0.978 but cost image AUROC (0.950) or AU-PRO (0.958 with each stage scaled to unit
  RMS; bottle AU-PRO 0.949 instead of 0.960) and 2.3x the search. EfficientNet-Lite1 /
  Lite2 at 448: 0.981 / 0.970 / 0.966 and 0.985 / 0.967 / 0.964, for 1.35x / 1.8x the
  backbone time: not worth the 100 ms budget.
* ``coreset_ratio=0.005`` with ``max_memory=4096`` (was 1 %): at 448 px this keeps the bank
  the size 1 % gave at 320 px (~16 entries per image) and the per-image search (3,136
  queries x M x 152) at about a third of the 100 ms budget. Pill at 448, 0.5 % vs 1 % (exact
  greedy): coverage radius 28.4 vs 26.4, image AUROC 0.979 vs 0.979, AU-PRO 0.966 vs 0.966.
  The cap binds above ~260 training images. Half of it (0.25 %, 2,093 entries on pill,
  seeds 0-2) halves the search but costs pill 0.005 pixel AUROC and 0.005 AU-PRO.
* ``coreset="two_stage"``: exact greedy per chunk of 65,536 patches (keeping 4x its share),
  then exact greedy over the survivors. It never holds all patches (memory: one chunk plus
  the survivors, preallocated; pill's fit RSS 1.29 GB against 1.65 GB for 0.1's defaults).
  On pill at 448 px (837,312 patches -> 4,096, ``benchmarks/quality.py``) it took 3.3 s
  against 6.4 s for exact greedy, at the same mean distance (0.998x) and a coverage radius
  10 % larger (one extreme patch); scored with the nearest distance the metrics are within
  the spread between coreset seeds (0.977 / 0.971 / 0.966 against 0.980 / 0.970 / 0.966).
  Exact greedy itself runs in pooled rounds (the same choices as one pass per centre, 21x
  faster on pill at 320 px) and stays available as ``coreset="greedy"``. Below
  ``4 x 65,536`` patches the two are the same (exact).
* ``image_score="map_max"`` (was the re-weighted patch maximum): the image score is the
  peak of the smoothed map the user sees. On pill at 448 over five coresets it ranged
  0.975-0.984 image AUROC where the raw patch maximum ranged 0.969-0.981 (re-weighting
  changed it by less than 0.001); bottle is 1.000 with either. Image-AUROC differences
  below ~0.005 on pill are within this spread between coreset seeds.
* ``n_nearest=3`` and ``sigma=6`` (were 1 and 4; sigma is in pixels at ``input_size``).
  Same bank per category, for (n_nearest, sigma):

  ========  ===================  ===================  ===================
  (k, s)    pill                 bottle               synthetic object
  ========  ===================  ===================  ===================
  (1, 4)    0.976 0.968 0.965    0.999 0.986 0.959    1.000 0.998 0.994
  (3, 4)    0.974 0.973 0.970    0.999 0.986 0.960    1.000 0.998 0.994
  (3, 6)    0.976 0.975 0.971    1.000 0.986 0.959    1.000 0.998 0.994
  (3, 8)    0.975 0.977 0.970    1.000 0.986 0.957    1.000 0.998 0.994
  (5, 8)    0.974 0.978 0.972    1.000 0.986 0.956
  (9, 8)    0.974 0.975 0.970
  ========  ===================  ===================  ===================

  The mean of the 3 nearest distances (a k-NN density score over the coreset) helps pill's
  pixel AUROC and AU-PRO together and costs bottle nothing; a wider blur helps pill's large
  regions but costs bottle AU-PRO, hence the middle value 6 (0.75 of a stride-8 cell).
* Not adopted: a separate stride-32 memory bank (``blocks.5``, 10 % coreset) whose map,
  scaled to the same RMS, is added with weight w reaches pill pixel AUROC 0.979-0.983
  (w = 0.15-0.25, k = 3 or 5, sigma 6-8; 0.980 needs w = 0.25), the issue's target, but
  costs pill image AUROC (0.972-0.974) and bottle (AU-PRO 0.949-0.954 instead of 0.959,
  pixel AUROC 0.985-0.986); 5 x 5
  instead of 3 x 3 patch neighbourhoods: pill 0.981 / 0.977 / 0.966 at (3, 8), more image
  AUROC, less AU-PRO. Normalising each map position by the training images' scores there
  (minus the mean, over the mean, or a z-score): pill pixel AUROC 0.969-0.974 and AU-PRO
  0.965-0.970, all below the plain map.
* ``context=0`` (opt-in, :meth:`_with_context`): the patch-score grid P becomes
  ``(1 - w) P + w G(P)``, G a Gaussian of ``context_sigma`` (24 px = 3 stride-8 cells),
  then the usual sigma 6: a heavy-tailed smoothing. Medians over coreset seeds 0-2 on the
  same features (image / pixel AUROC / AU-PRO):

  ===============  ===================  ===================
  w, sigma (px)    pill                 bottle
  ===============  ===================  ===================
  0 (default)      0.977 0.974 0.970    1.000 0.987 0.960
  1/3, 16          0.978 0.977 0.969
  0.43, 24         0.979 0.980 0.967
  0.5, 24          0.980 0.980 0.965    1.000 0.985 0.950
  0.5, 24, k = 5   0.979 0.982 0.967    1.000 0.985 0.948
  ===============  ===================  ===================

  Pill's pixel AUROC is its ``pill_type`` defects' (masks covering 41 % of the image, the
  whole pill; 0.976 -> 0.984 with w = 0.5, k = 5, their AU-PRO 0.924 -> 0.948), and every
  pill defect type gains. Bottle loses on both pixel figures with any w > 0 (AU-PRO 0.960
  -> 0.950 at w = 0.5, pixel AUROC 0.987 -> 0.985): small and thin defects lose their sharp
  outline, as they would on parts with tiny defects. w = 0.5 meets the issue's pill targets
  with bottle exactly at its limits, which is a choice made for one category; it stays
  opt-in (``--param context=0.5``) for parts whose defects can cover the whole object.
  Two other shapes of the same idea, medians over seeds 0-2: ``max(P, G(P))`` (24 px)
  keeps pill's AU-PRO (0.977 / 0.980 / 0.970) but costs bottle as much (0.985 pixel AUROC,
  AU-PRO 0.954); a grey-scale closing of P (3 x 3 cells: fills holes, keeps outlines) is
  neutral: pill 0.977 / 0.977 / 0.970, bottle 1.000 / 0.987 / 0.960, and in one run of
  ``benchmarks/quality.py`` with it as an extra config (not kept) the synthetic grayscale
  sets lost 0.0003 and 0.0012 AU-PRO. Not adopted.
* ``augment_rotations=False``: adding the good images rotated by 90/180/270 degrees to the
  bank (before the coreset) gave nothing on the synthetic objects (randomly placed and
  oriented: 1.000 / 0.998 / 0.994 with and without) and harmed the synthetic grayscale
  textures (image AUROC 0.981 -> 0.976, AU-PRO 0.974 -> 0.967), for 3-6x the fit time.
  It stays available as an opt-in flag; none of our development data needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectmap.detectors.base import (
    BackendMismatchWarning,
    Detector,
    ParamError,
    check_array,
    check_choice,
    check_number,
    register_detector,
    upsample_blur_matrix,
)
from defectmap.detectors.coreset import StreamingCoreset, greedy_cover
from defectmap.detectors.neighbors import NearestNeighborIndex
from defectmap.features.backbones import DEFAULT_BACKBONE, load_backbone
from defectmap.features.preprocess import ImageInput, as_image_array
from defectmap.progress import ProgressCallback

_FIT_BATCH = 1  # measured: batch 1 is fastest per image on a 2-core CPU (see base)
#: Patches per first-stage chunk of the two-stage coreset: 65,536 x 64-d float32 = 16 MB,
#: inside this CPU's 32 MB L3 cache, so each greedy step streams from cache, not DRAM.
CORESET_CHUNK = 65536
#: Each chunk keeps this many times its share of the final bank for the second stage.
CORESET_OVERSAMPLE = 4.0
IMAGE_SCORES = ("map_max", "patch_max", "reweighted")
CORESETS = ("two_stage", "greedy")


def aggregate_patches(features: list[torch.Tensor], n_features: int | None) -> torch.Tensor:
    """Locally aware patch features (PatchCore Sec. 3.1).

    Parameters
    ----------
    features : [stride-8 map (B, C1, h, w), stride-16 map (B, C2, h', w')].
    n_features : if set, average-pool the concatenated channels down to this many.

    Returns
    -------
    Float32 tensor (B, C, h, w) with C = C1 + C2 (or ``n_features``).
    """
    size = features[0].shape[-2:]
    parts = []
    for fmap in features:
        # 3x3 neighbourhood aggregation (p = 3); padding is not counted in the mean.
        fmap = F.avg_pool2d(fmap, 3, stride=1, padding=1, count_include_pad=False)
        if fmap.shape[-2:] != size:
            fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
        parts.append(fmap)
    out = torch.cat(parts, dim=1)
    if n_features is not None and n_features < out.shape[1]:
        b, c, h, w = out.shape
        flat = out.permute(0, 2, 3, 1).reshape(-1, 1, c)
        out = F.adaptive_avg_pool1d(flat, n_features).reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return out.contiguous()


class _RotatedViews(Sequence[np.ndarray]):
    """The images and their copies rotated by 90, 180 and 270 degrees (read lazily)."""

    def __init__(self, images: Sequence[ImageInput]) -> None:
        self.images = images

    def __len__(self) -> int:
        return 4 * len(self.images)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        image = as_image_array(self.images[index // 4], index // 4)
        return np.ascontiguousarray(np.rot90(image, index % 4))


@register_detector
class PatchCore(Detector):
    """PatchCore anomaly detector.

    Parameters
    ----------
    backbone : backbone name (offline ``efficientnet_lite0`` by default, or a timm model).
    input_size : side of the square network input in pixels (images are resized, not
        cropped).
    coreset_ratio : fraction of the training patches kept in the memory bank (0 < r <= 1).
    max_memory : upper bound on the number of memory-bank entries, which bounds the
        nearest-neighbour search per image (None: no bound).
    coreset : ``"two_stage"`` (greedy per chunk of patches, then greedy over the survivors;
        memory: one chunk) or ``"greedy"`` (exact greedy k-center over all patches, held in
        one preallocated array).
    projection_dim : dimension of the random projection used by the coreset selection.
    n_features : optional channel reduction of the patch features (None: keep all).
    image_score : ``"map_max"`` (peak of the smoothed native-size map), ``"patch_max"``
        (largest patch distance) or ``"reweighted"`` (``patch_max`` with the paper's Eq. 7).
    n_nearest : a patch's score is its mean distance to its ``n_nearest`` nearest memory
        entries (1: the paper's nearest-neighbour distance).
    n_neighbors : size of the memory neighbourhood N_b used by ``"reweighted"``.
    sigma : Gaussian smoothing of the map, in pixels at ``input_size``.
    context : weight ``w`` of a wide component in the map (0 <= w <= 1; 0: off): the patch
        scores become ``(1 - w) P + w G(P)``, with ``G`` a Gaussian blur of
        ``context_sigma``, before the usual upsampling and ``sigma`` smoothing. For parts
        whose defects can cover the whole object (a pill of the wrong type); it costs
        small defects their sharp outline (measured figures in the module docstring).
    context_sigma : width of ``G``, in pixels at ``input_size``.
    augment_rotations : also put the training images rotated by 90, 180 and 270 degrees in
        the bank (for parts that appear at any rotation; fitting costs 4x).
    random_state : seed of the coreset's start points and projection.
    """

    name = "patchcore"
    _fitted_attr = "memory_bank_"
    _strides = (8, 16)

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        input_size: int = 448,
        coreset_ratio: float = 0.005,
        max_memory: int | None = 4096,
        coreset: str = "two_stage",
        projection_dim: int = 64,
        n_features: int | None = None,
        image_score: str = "map_max",
        n_nearest: int = 3,
        n_neighbors: int = 9,
        sigma: float = 6.0,
        context: float = 0.0,
        context_sigma: float = 24.0,
        augment_rotations: bool = False,
        random_state: int = 0,
    ) -> None:
        self.backbone = backbone
        self.input_size = input_size
        self.coreset_ratio = coreset_ratio
        self.max_memory = max_memory
        self.coreset = coreset
        self.projection_dim = projection_dim
        self.n_features = n_features
        self.image_score = image_score
        self.n_nearest = n_nearest
        self.n_neighbors = n_neighbors
        self.sigma = sigma
        self.context = context
        self.context_sigma = context_sigma
        self.augment_rotations = augment_rotations
        self.random_state = random_state

    # -- parameters --------------------------------------------------------------------
    @classmethod
    def _upgrade_params(cls, format_version: int, params: dict[str, Any]) -> dict[str, Any]:
        """Format 1 (defectmap 0.1): ``reweight`` became ``image_score``; its coreset was
        exact greedy; every other new parameter takes the value that behaves as before."""
        if format_version == 1:
            params = dict(params)
            reweight = params.pop("reweight", True)
            params.setdefault("image_score", "reweighted" if reweight else "patch_max")
            params.setdefault("coreset", "greedy")
            params.setdefault("input_size", 320)
            params.setdefault("coreset_ratio", 0.01)
            params.setdefault("max_memory", None)
            params.setdefault("n_nearest", 1)
        return params

    def _check_params(self) -> None:
        super()._check_params()
        check_number(self.coreset_ratio, "coreset_ratio", float, low=0.0, low_open=True,
                     high=1.0)
        check_number(self.max_memory, "max_memory", int, low=1, optional=True)
        check_choice(self.coreset, "coreset", CORESETS)
        check_number(self.projection_dim, "projection_dim", int, low=1)
        check_number(self.n_features, "n_features", int, low=1, optional=True)
        check_choice(self.image_score, "image_score", IMAGE_SCORES)
        check_number(self.n_nearest, "n_nearest", int, low=1)
        check_number(self.n_neighbors, "n_neighbors", int, low=1)
        check_number(self.sigma, "sigma", float, low=0.0)
        check_number(self.context, "context", float, low=0.0, high=1.0)
        check_number(self.context_sigma, "context_sigma", float, low=0.0, low_open=True)
        if not isinstance(self.augment_rotations, bool):
            raise ParamError("augment_rotations", f"expected true or false, got "
                                                  f"{self.augment_rotations!r}")
        check_number(self.random_state, "random_state", int, low=0)

    def _map_max_score(self) -> bool:
        return self.image_score == "map_max"

    def _memory_size(self, n_patches: int) -> int:
        """Number of memory-bank entries for ``n_patches`` training patches."""
        n = max(1, int(round(self.coreset_ratio * n_patches)))
        return n if self.max_memory is None else min(n, int(self.max_memory))

    def _feature_dim(self) -> int:
        channels = sum(load_backbone(self.backbone, self._strides, allow_download=False).channels)
        return channels if self.n_features is None else min(channels, int(self.n_features))

    # -- the verbs ---------------------------------------------------------------------
    def _embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        return aggregate_patches(features, self.n_features)

    def fit(
        self, images: Sequence[ImageInput], progress: ProgressCallback | None = None
    ) -> PatchCore:
        """Build the memory bank from defect-free images; return self."""
        self._check_params()
        if len(images) == 0:
            raise ValueError("fit needs at least one image")
        if self.augment_rotations and getattr(self, "_feature_source", None) is not None:
            raise ValueError("augment_rotations needs the images: it cannot fit from shared "
                             "features (fit_features)")
        rng = np.random.default_rng(self.random_state)
        views = _RotatedViews(images) if self.augment_rotations else images
        sampler: StreamingCoreset | None = None
        with torch.inference_mode():
            # extract -> accumulate into the coreset sampler (preallocated) -> subsample
            for emb in self._extract(views, _FIT_BATCH, "PatchCore features", self._embed,
                                     progress):
                patches = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
                if sampler is None:
                    n_total = patches.shape[0] * len(views) // emb.shape[0]
                    n_select = self._memory_size(n_total)
                    chunk = CORESET_CHUNK if self.coreset == "two_stage" else n_total
                    sampler = StreamingCoreset(n_total, n_select, patches.shape[1], rng,
                                               self.projection_dim, chunk, CORESET_OVERSAMPLE)
                sampler.add(patches)
            assert sampler is not None
            self.memory_bank_ = sampler.result().contiguous()
            self.index_ = NearestNeighborIndex(self.memory_bank_)
        return self

    def add_good(
        self,
        images: Sequence[ImageInput],
        radius: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Add patches of more defect-free images to the memory bank; return how many rows.

        Used when an operator confirms that a flagged part is good (a false alarm). The
        coreset selection of :meth:`fit` is continued over the new images' patches
        (:func:`~defectmap.detectors.coreset.greedy_cover`, starting from each new patch's
        score): patches the bank already covers are never added, and picking stops once
        every new patch is within ``radius`` of a pick or already scores at most ``radius``.
        Each pick is stored ``n_nearest`` times, so that a patch's mean distance to its
        ``n_nearest`` nearest entries is at most its distance to the pick. Since a map is a
        smoothed upsampling of the patch scores, none of these images then has a map value
        above ``radius``; pass the calibrated pixel
        threshold to make them free of predicted defects. The detector's other state and
        its parameters are unchanged; recalibrate afterwards (validation scores can only
        fall).

        Parameters
        ----------
        images : defect-free images (uint8 arrays (H, W[, 3]) or paths).
        radius : largest distance left between a new patch and the bank (> 0); None adds
            every patch the bank does not already hold.
        progress : reports the feature extraction (see :mod:`defectmap.progress`).

        Returns
        -------
        int
            Number of memory-bank rows added (``n_nearest`` per picked patch; 0 when the
            bank already covered every new patch).
        """
        self._check_fitted()
        if radius is not None and not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if len(images) == 0:
            return 0
        with torch.inference_mode():
            patches = torch.cat([
                emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
                for emb in self._extract(images, _FIT_BATCH, "PatchCore features", self._embed,
                                         progress)
            ])
            start = self._patch_scores(patches)
            keep = greedy_cover(patches, start, 0.0 if radius is None else radius)
            rows = patches[torch.from_numpy(keep)].repeat_interleave(int(self.n_nearest), 0)
            if rows.shape[0]:
                self.memory_bank_ = torch.cat([self.memory_bank_, rows]).contiguous()
                self.index_ = NearestNeighborIndex(self.memory_bank_)
        return int(rows.shape[0])

    def _patch_scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Scores (Q,) of patch features (Q, C): mean distance to the n_nearest nearest."""
        return self._search(queries)[0]

    def _search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores (Q,) and the index (Q,) of each patch's nearest memory entry."""
        k = min(int(self.n_nearest), self.memory_bank_.shape[0])
        dist, idx = self.index_.search(queries, k)
        return (dist[:, 0] if k == 1 else dist.mean(dim=1)), idx[:, 0]

    def _predict_batch(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self._embed(features)
        b, c, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, c)
        distances, nearest = self._search(queries)
        patch_scores = distances.reshape(b, h * w)
        scores = patch_scores.max(dim=1).values
        if self.image_score == "reweighted" and self.memory_bank_.shape[0] > 1:
            nn_index = nearest.reshape(b, h * w)
            scores = self._reweight(queries.reshape(b, h * w, c), patch_scores, nn_index)
        return scores, self._with_context(patch_scores.reshape(b, h, w))

    def _with_context(self, grid: torch.Tensor) -> torch.Tensor:
        """``(1 - w) P + w G(P)`` of patch-score grids (B, h, w); ``P`` when w = 0.

        ``G`` is :func:`~defectmap.detectors.base.gaussian_blur` with ``context_sigma``
        converted to grid cells, applied as two small matrix products (so that it traces
        into an exported graph). A convex combination of averages: no value rises above the
        grid's maximum, which :meth:`add_good`'s radius guarantee needs.
        """
        weight = float(self.context)
        if weight == 0.0:
            return grid
        h, w = (int(n) for n in grid.shape[-2:])
        per_cell = float(self.context_sigma) / int(self.input_size)  # sigma / input side
        rows = upsample_blur_matrix(h, h, per_cell * h)
        cols = upsample_blur_matrix(w, w, per_cell * w)
        return (1.0 - weight) * grid + weight * (rows @ grid @ cols.T)

    def _reweight(
        self, queries: torch.Tensor, patch_scores: torch.Tensor, nn_index: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 7: s = (1 - softmax over N_b(m*) of ||m_test* - m||, at m*) * s*.

        m_test* is the test patch with the largest score s*, m* its nearest memory entry and
        N_b(m*) the b memory entries nearest to m* (m* itself first).
        """
        bank = self.memory_bank_
        k = min(self.n_neighbors, bank.shape[0])
        best = patch_scores.argmax(dim=1)
        rows = torch.arange(queries.shape[0])
        m_test = queries[rows, best]                      # (B, C)
        m_star = bank[nn_index[rows, best]]               # (B, C)
        _, support = self.index_.search(m_star, k)
        dists = torch.linalg.vector_norm(m_test[:, None, :] - bank[support], dim=2)  # (B, k)
        weights = 1.0 - torch.softmax(dists, dim=1)[:, 0]
        return weights * patch_scores[rows, best]

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"memory_bank": self.memory_bank_.numpy()}
        return arrays, {"n_memory": int(self.memory_bank_.shape[0]),
                        "nn_backend": self.index_.backend}

    def _set_state(self, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        bank = arrays["memory_bank"]
        check_array(bank, "memory_bank", (None, self._feature_dim()))
        if bank.shape[0] < 1:
            raise ParamError("memory_bank", "is empty")
        n_memory = extra.get("n_memory", bank.shape[0])
        if n_memory != bank.shape[0]:
            raise ParamError("state.n_memory", f"is {n_memory!r}, but memory_bank has "
                                               f"{bank.shape[0]} rows")
        self.memory_bank_ = torch.from_numpy(np.ascontiguousarray(bank))
        self.index_ = NearestNeighborIndex(self.memory_bank_)
        saved_backend = extra.get("nn_backend")
        if saved_backend is not None and saved_backend != self.index_.backend:
            warnings.warn(
                f"this model was fitted with the {saved_backend} nearest-neighbour backend and "
                f"now searches with {self.index_.backend} (both exact; distances agree to "
                f"about 1e-6)", BackendMismatchWarning, stacklevel=3,
            )
