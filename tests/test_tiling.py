"""Tiling mode: the grid, the blend, the stitching, the wrapper's files, and that tiles find a
small defect in a large image that a plain resize loses (real fits, small synthetic data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from defectmap.cli._common import run_app
from defectmap.data.synth_large import make_large_image_dataset, render_large
from defectmap.detectors import PatchCore, create_detector
from defectmap.errors import ModelFileError
from defectmap.metrics import aupro, pixel_auroc
from defectmap.tiling import (
    Stitcher,
    TiledDetector,
    TileSequence,
    TilingError,
    blend_window,
    load_scorer,
    tile_grid,
    tile_starts,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiles mean many small forward passes; on a loaded shared CPU two intra-op threads
    waiting on each other made them ~10x slower than one (measured). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


GRIDS = [(512, 512, 128, 0.25), (300, 200, 128, 0.25), (100, 700, 128, 0.5), (257, 256, 64, 0.0),
         (640, 640, 128, 0.75), (64, 64, 128, 0.25)]


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_tile_grid_covers_every_pixel_and_stays_inside(height: int, width: int, tile: int,
                                                       overlap: float) -> None:
    count = np.zeros((height, width), int)
    for t in tile_grid(height, width, tile, overlap):
        assert 0 <= t.y and t.y + t.height <= height and 0 <= t.x and t.x + t.width <= width
        assert (t.height, t.width) == (min(tile, height), min(tile, width))
        count[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert count.min() >= 1
    for length in (height, width):
        starts = tile_starts(length, tile, overlap)
        if length > tile:
            assert starts[0] == 0 and starts[-1] == length - tile
            # neighbours overlap by at least overlap * tile (up to the rounding of the starts)
            assert np.diff(starts).max() <= tile * (1 - overlap) + 1


def test_tile_starts_of_the_example_grid() -> None:
    assert tile_starts(512, 128, 0.25).tolist() == [0, 96, 192, 288, 384]
    assert tile_starts(512, 128, 0.0).tolist() == [0, 128, 256, 384]
    assert tile_starts(513, 128, 0.0).tolist() == [0, 96, 192, 289, 385]


def test_blend_window_ramps_linearly() -> None:
    w = blend_window(8, 4)
    assert np.allclose(w, [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    assert np.array_equal(blend_window(5, 0), np.ones(5))


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_blend_weights_sum_to_one(height: int, width: int, tile: int, overlap: float) -> None:
    stitcher = Stitcher(height, width, tile, overlap)
    total = np.zeros((height, width))
    covered = np.zeros((height, width), int)
    for t in stitcher.tiles:
        w = stitcher.weights(t)
        assert w.min() > 0
        total[t.y : t.y + t.height, t.x : t.x + t.width] += w
        covered[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert np.abs(total - 1.0).max() < 1e-12
    if overlap > 0 and min(height, width) > tile:
        assert covered.max() >= 4  # overlaps exist, and there the weights still sum to one


def _stitch(height: int, width: int, tile: int, overlap: float, field: np.ndarray) -> np.ndarray:
    stitcher = Stitcher(height, width, tile, overlap)
    for t in stitcher.tiles:
        stitcher.add(t, t.crop(field).astype(np.float32))
    return stitcher.result()


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_stitching_a_constant_returns_the_constant(height: int, width: int, tile: int,
                                                   overlap: float) -> None:
    out = _stitch(height, width, tile, overlap, np.full((height, width), 3.25))
    assert out.shape == (height, width) and out.dtype == np.float32
    assert np.abs(out - 3.25).max() < 1e-5


def test_tile_maps_land_on_their_native_pixels() -> None:
    # Each tile's map is the native field cropped to the tile: stitching gives the field.
    yy, xx = np.mgrid[0:300, 0:200]
    field = np.sin(yy / 7.0) + 0.01 * xx
    out = _stitch(300, 200, 128, 0.25, field)
    assert np.abs(out - field).max() < 1e-5
    # Rows start at 0, 86, 172 and columns at 0, 72. A spike at local (45, 17) of the tile at
    # (172, 72) lands at native (217, 89), weighted by that tile's blend weight there.
    stitcher = Stitcher(300, 200, 128, 0.25)
    target = next(t for t in stitcher.tiles if (t.y, t.x) == (172, 72))
    for t in stitcher.tiles:
        tile_map = np.zeros((t.height, t.width), np.float32)
        if t == target:
            tile_map[45, 17] = 7.0
        stitcher.add(t, tile_map)
    out = stitcher.result()
    assert np.argwhere(out > 0).tolist() == [[217, 89]]
    assert out[217, 89] == pytest.approx(7.0 * stitcher.weights(target)[45, 17], rel=1e-6)


def test_tile_sequence_reads_each_image_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    import defectmap.tiling as tiling

    images = [render_large(256, 0, (1, i), None, 8)[0] for i in range(2)]
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    reads: list[int] = []
    real = tiling.as_image_array
    monkeypatch.setattr(tiling, "as_image_array",
                        lambda image, index=0: reads.append(index) or real(image, index))
    seq = TileSequence(paths, 128, 0.25)
    grid = tile_grid(256, 256, 128, 0.25)
    assert len(seq) == 2 * len(grid) == 18
    tiles = [seq[k] for k in range(len(seq))]
    assert reads == [0, 1]
    for k, tile in enumerate(tiles):
        expected = grid[k % len(grid)].crop(images[k // len(grid)])
        assert tile.shape[:2] == (128, 128)
        assert np.array_equal(tile[..., 0], expected)  # gray PNG read as RGB
    with pytest.raises(IndexError):
        seq[18]


def test_invalid_tiling_is_refused() -> None:
    det = create_detector("patchcore", input_size=64)
    with pytest.raises(TilingError, match="at least 32"):
        TiledDetector(det, tile_size=16)
    with pytest.raises(TilingError, match="overlap"):
        TiledDetector(det, tile_size=64, overlap_ratio=0.9)


@pytest.fixture(scope="module")
def tiled_fit() -> TiledDetector:
    train = [render_large(192, 0, (1, i), None, 8)[0] for i in range(2)]
    inner = create_detector("patchcore", input_size=64, coreset_ratio=0.1)
    return TiledDetector(inner, tile_size=64, overlap_ratio=0.25).fit(train)


def test_save_load_round_trip(tiled_fit: TiledDetector, tmp_path: Path) -> None:
    image, _ = render_large(192, 0, (2, 0), "spot", 8)
    before = tiled_fit.predict([image, image[:150, :170]])
    assert [m.shape for m in before.maps] == [(192, 192), (150, 170)]
    assert before.scores[0] == pytest.approx(float(before.maps[0].max()))
    tiled_fit.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["tiling"] == {"format": 1, "tile_size": 64, "overlap_ratio": 0.25}
    loaded = load_scorer(tmp_path)
    assert isinstance(loaded, TiledDetector)
    assert loaded.get_params() == tiled_fit.get_params()
    assert loaded.get_params()["tiling"]["scale"] == 1.0
    after = loaded.predict([image, image[:150, :170]])
    assert np.array_equal(after.scores, before.scores)
    for a, b in zip(after.maps, before.maps, strict=True):
        assert np.array_equal(a, b)


def test_models_without_tiling_load_unchanged(tiled_fit: TiledDetector, tmp_path: Path) -> None:
    tiled_fit.detector.save(tmp_path)  # the plain detector: no "tiling" entry
    assert type(load_scorer(tmp_path)) is PatchCore
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["tiling"] = {"format": 1, "tile_size": 8, "overlap_ratio": 0.25}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="model.json: field 'tiling' is invalid"):
        load_scorer(tmp_path)


def test_add_good_through_tiles_clears_a_false_alarm() -> None:
    # Operator feedback on a tiled model: the false alarm's tiles go into the bank.
    train = [render_large(192, 0, (1, i), None, 8)[0] for i in range(2)]
    scorer = TiledDetector(create_detector("patchcore", input_size=64, coreset_ratio=0.1),
                           tile_size=64).fit(train)
    good = render_large(192, 0, (1, 5), None, 8)[0]
    reference = scorer.predict([good]).maps[0]
    radius = float(np.quantile(reference, 0.999))
    alarm = render_large(192, 0, (1, 6), None, 8)[0]
    alarm[80:100, 90:110] = 250  # a sticker on a good part: flagged
    assert scorer.predict([alarm]).maps[0].max() > 1.5 * radius
    bank = scorer.detector.memory_bank_.shape[0]
    added = scorer.add_good([alarm], radius=radius)
    assert added > 0 and scorer.detector.memory_bank_.shape[0] == bank + added
    # The stitched map is a weighted mean of tile maps, each now within the radius.
    assert scorer.predict([alarm]).maps[0].max() <= radius * (1 + 1e-4)
    assert np.all(scorer.predict([good]).maps[0] <= reference + 1e-5)


def test_tiles_localise_a_small_defect_that_a_resize_loses() -> None:
    # 512 px images, 12 px defects; 128 px network input either way: the resize shrinks a
    # defect to 3 px, 128 px tiles (25 per image) keep it at 12 px.
    train = [render_large(512, 0, (1, i), None, 12)[0] for i in range(3)]
    test = [render_large(512, 0, (2, i), kind, 12)
            for i, kind in enumerate(["weave", "spot", "weave", "spot"])]
    images, masks = [t[0] for t in test], [t[1] for t in test]
    results = {}
    for name, tile in (("resize", None), ("tiles", 128)):
        det = create_detector("patchcore", input_size=128, coreset_ratio=0.1)
        scorer = det if tile is None else TiledDetector(det, tile_size=tile)
        maps = scorer.fit(train).predict(images).maps
        assert all(m.shape == (512, 512) for m in maps)
        results[name] = (pixel_auroc(maps, masks), aupro(maps, masks))
    (auroc_r, pro_r), (auroc_t, pro_t) = results["resize"], results["tiles"]
    # Measured (seed 0): resize 0.636 / 0.143, tiles 0.998 / 0.995.
    assert auroc_t > 0.95 and pro_t > 0.9
    assert auroc_t > auroc_r + 0.2 and pro_t > pro_r + 0.5


# ------------------------------------------------------------------------- CLI, end to end


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = run_app([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def large_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("large")
    make_large_image_dataset(root, n_train=14, n_test=4, size=256, defect_size=16)
    return root


@pytest.fixture(scope="module")
def tiled_model(large_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiled") / "model"
    rc = run_app(["fit", str(large_root), "--category", "large", "--tile", "128",
                  "--tile-scale", "0.5", "--tile-overlap", "0.3", "--out", str(out)])
    assert rc == 0
    return out


def test_fit_with_tiles_then_predict_and_evaluate(tiled_model: Path, large_root: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from defectmap.pipeline import load_model

    meta = json.loads((tiled_model / "model.json").read_text())
    assert meta["tiling"]["tile_size"] == 128 and meta["tiling"]["overlap_ratio"] == 0.3
    assert meta["params"]["input_size"] == 64  # 128 px tiles at scale 0.5
    model = load_model(tiled_model)
    assert isinstance(model.detector, TiledDetector) and model.calibration is not None
    defect = sorted((large_root / "large" / "test" / "spot").glob("*.png"))[0]
    rc, _, err = run(capsys, "predict", tiled_model, defect, "--out", tmp_path / "pred")
    assert rc == 0, err
    rows = json.loads((tmp_path / "pred" / "results.json").read_text())["results"]
    amap = tifffile.imread(tmp_path / "pred" / rows[0]["map"])
    assert amap.shape == (256, 256)  # native size
    assert rows[0]["score"] == pytest.approx(float(amap.max()), rel=1e-6)
    rc, _, err = run(capsys, "evaluate", tiled_model, large_root, "--category", "large",
                     "--out", tmp_path / "eval", "--no-maps")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] > 0.9  # measured 0.967 (AU-PRO 0.89)


def test_export_refuses_a_tiled_model(tiled_model: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "export", tiled_model, "--out", tmp_path / "exp")
    assert rc == 1
    assert "tiled model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("flags", [
    ["--tile-overlap", "0.2"],                             # needs --tile
    ["--tile", "16"],                                      # below the smallest tile
    ["--tile", "128", "--tile-overlap", "0.8"],            # overlap too large
    ["--tile", "128", "--tile-scale", "0.1"],              # a 13 px network input
    ["--tile", "128", "--tile-scale", "0.5", "--image-size", "64"],
])
def test_tiling_usage_errors_exit_2(flags: list[str], large_root: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "fit", large_root, "--category", "large", *flags,
                     "--out", tmp_path / "m")
    assert rc == 2, err
    assert not (tmp_path / "m").exists()


def test_service_scores_an_upload_with_the_tiled_model(tiled_model: Path, large_root: Path,
                                                       tmp_path: Path) -> None:
    from defectmap.pipeline import load_model
    from defectmap.serve.service import InspectionService

    defect = sorted((large_root / "large" / "test" / "spot").glob("*.png"))[0]
    service = InspectionService(tiled_model, db_path=tmp_path / "audit.sqlite")
    try:
        record, replay = service.inspect_upload(defect.read_bytes(), defect.name)
    finally:
        service.close()
    assert not replay
    expected = load_model(tiled_model).inspect([defect])[0]
    assert (record.width, record.height) == (256, 256)
    assert record.score == pytest.approx(expected.score, rel=1e-6)
    assert record.decision == expected.decision


def test_benchmark_with_tiles_fits_tiled_cells_and_resumes_only_the_same_tiling(
        large_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from defectmap.pipeline import load_model

    out = tmp_path / "bench"
    flags = ["--category", "large", "--tile", "128", "--tile-scale", "0.5", "--out", out]
    rc, _, err = run(capsys, "benchmark", large_root, *flags)
    assert rc == 0, err
    cell = json.loads((out / "large" / "patchcore" / "cell.json").read_text())
    assert cell["cell"]["tile_size"] == 128 and cell["cell"]["tile_overlap"] == 0.25
    assert cell["cell"]["params"] == [["input_size", 64]]
    model = load_model(out / "large" / "patchcore" / "model")
    assert isinstance(model.detector, TiledDetector)
    assert model.detector.tile_size == 128
    assert cell["metrics"]["pixel_auroc"] > 0.9  # same data and tiling as the fit test above
    # --resume reuses the cell for the same tiling, and refits it for another one.
    rc, out_text, err = run(capsys, "benchmark", large_root, *flags, "--resume")
    assert rc == 0 and "1 cells reused" in out_text, err
    rc, out_text, err = run(capsys, "benchmark", large_root, *flags[:-2], "--tile-overlap",
                            "0.5", "--out", out, "--resume")
    assert rc == 0 and "reused" not in out_text, err
    cell = json.loads((out / "large" / "patchcore" / "cell.json").read_text())
    assert cell["cell"]["tile_overlap"] == 0.5


def test_benchmark_tiling_usage_error_exits_2(large_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "benchmark", large_root, "--category", "large", "--tile-overlap",
                     "0.2", "--out", tmp_path / "b")
    assert rc == 2 and "--tile-overlap and --tile-scale need --tile SIZE" in err
    assert not (tmp_path / "b").exists()
