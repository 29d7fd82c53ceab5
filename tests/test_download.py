"""MVTec download, offline: a local HTTP server serves a small archive built by the test."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.cli._common import run_app
from defectmap.constants import (
    LOCO_CATEGORIES,
    MVTEC_AD2_CATEGORIES,
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
)
from defectmap.data import layouts
from defectmap.data.download import (
    DATASETS,
    MVTEC_ARCHIVES,
    Archive,
    download_dataset,
    download_mvtec,
)
from defectmap.data.mvtec import load_category
from defectmap.data.synth_layouts import make_loco_dataset, make_visa_dataset
from defectmap.errors import DatasetError, OfflineError
from ports import free_port


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(value).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def _tar_xz(categories: tuple[str, ...]) -> bytes:
    """An archive laid out like MVTec's: CATEGORY/train/good, test/..., ground_truth/..."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        files = {"license.txt": b"CC BY-NC-SA 4.0"}
        for c in categories:
            files |= {f"{c}/train/good/{i:03d}.png": _png(i) for i in range(3)}
            files |= {f"{c}/test/good/000.png": _png(10), f"{c}/test/dent/000.png": _png(11),
                      f"{c}/ground_truth/dent/000_mask.png": _png(12)}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Server:
    """Serves ``files`` with Range support; can cut the first ``drop_first`` transfers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None
        self.drops_left = 0
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drops_left > 0 and server.drop_after is not None:
                    server.drops_left -= 1
                    self.wfile.write(body[: server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


def _serve(server: _Server, name: str, categories: tuple[str, ...]) -> tuple[bytes, str]:
    data = _tar_xz(categories)
    server.files[f"/{name}"] = data
    return data, hashlib.sha256(data).hexdigest()


def _manifest(server: _Server, sha: str | None) -> dict[str, Archive]:
    return {"widget": Archive("widget.tar.xz", f"{server.url}/widget.tar.xz", sha, ("widget",))}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_archive_table_is_complete():
    assert set(MVTEC_ARCHIVES) == set(MVTEC_CATEGORIES) | {"all"}
    assert all(a.url.startswith("https://") and a.url.endswith(a.filename)
               for a in MVTEC_ARCHIVES.values())
    full = MVTEC_ARCHIVES["all"]
    assert full.categories == MVTEC_CATEGORIES
    assert full.sha256 is not None and len(full.sha256) == 64
    int(full.sha256, 16)


def test_success_extracts_a_complete_category(server, tmp_path):
    _, sha = _serve(server, "widget.tar.xz", ("widget",))
    (folder,) = download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha))
    assert folder == tmp_path / "widget"
    data = load_category(folder)
    assert len(data.train) == 3 and len(data.test) == 2 and data.has_masks
    assert (folder / "train/good/001.png").read_bytes() == _png(1)
    assert _leftovers(tmp_path) == []  # no .part, no .downloads, no .extract-*
    # present categories are not fetched again
    n = len(server.requests)
    download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha))
    assert len(server.requests) == n


def test_category_without_checksum_uses_the_verified_full_archive(server, tmp_path):
    _, sha = _serve(server, "mvtec_anomaly_detection.tar.xz", ("bottle", "cable"))
    table = {
        "bottle": Archive("bottle.tar.xz", "https://unused.invalid/bottle.tar.xz", None,
                          ("bottle",)),
        "all": Archive("mvtec_anomaly_detection.tar.xz", "https://unused.invalid/x", sha,
                       ("bottle", "cable")),
    }
    download_mvtec(tmp_path, ["bottle"], base_url=server.url, manifest=table)
    assert server.requests == [("/mvtec_anomaly_detection.tar.xz", None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottle"]  # only what was asked
    with pytest.raises(DatasetError, match=r"no SHA-256 known for bottle\.tar\.xz"):
        download_mvtec(tmp_path / "b", ["bottle"], manifest={"bottle": table["bottle"]})


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    _serve(server, "widget.tar.xz", ("widget",))
    with pytest.raises(DatasetError, match=r"widget\.tar\.xz: SHA-256 mismatch"):
        download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, "0" * 64))
    assert list(tmp_path.iterdir()) == []  # no category, no .part, no .extract-*


def test_interrupted_transfer_resumes(server, tmp_path):
    data, sha = _serve(server, "widget.tar.xz", ("widget",))
    server.drop_after, server.drops_left = 1000, 1
    with pytest.raises(DatasetError, match="interrupted.*run the command again to resume"):
        download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha), retries=0)
    part = tmp_path / ".downloads" / "widget.tar.xz.part"
    assert part.stat().st_size == 1000 and not (tmp_path / "widget").exists()
    download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha))
    assert server.requests[-1] == ("/widget.tar.xz", "bytes=1000-")
    assert load_category(tmp_path / "widget").train
    # automatic retries resume within one call
    server.drops_left = 2
    download_mvtec(tmp_path / "again", ["widget"], manifest=_manifest(server, sha))
    assert [r for _, r in server.requests[-3:]] == [None, "bytes=1000-", "bytes=2000-"]
    assert len(data) > 2000


def test_offline_gives_a_clear_error(tmp_path):
    port = free_port()  # a port that nobody listens on
    table = {"widget": Archive("widget.tar.xz", f"http://127.0.0.1:{port}/widget.tar.xz",
                               "0" * 64, ("widget",))}
    with pytest.raises(OfflineError, match=rf"cannot reach 127\.0\.0\.1:{port}.*offline"):
        download_mvtec(tmp_path, ["widget"], manifest=table, timeout=5)
    assert list(tmp_path.iterdir()) == []  # not even an empty .downloads folder


def test_archive_without_the_category_is_refused(server, tmp_path):
    _, sha = _serve(server, "widget.tar.xz", ("gadget",))
    with pytest.raises(DatasetError, match="no category folder widget/"):
        download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha))
    assert not (tmp_path / "gadget").exists() and not list(tmp_path.glob(".extract-*"))
    # the verified archive is kept so that a fixed manifest need not download it again
    assert [p.name for p in (tmp_path / ".downloads").iterdir()] == ["widget.tar.xz"]
    with pytest.raises(DatasetError, match="unknown categories nope"):
        download_mvtec(tmp_path, ["nope"], manifest=_manifest(server, sha))


def test_extraction_failing_midway_leaves_no_half_category(server, tmp_path):
    data = _tar_xz(("widget",))
    broken = data[: int(len(data) * 0.7)]  # the checksum matches, the archive is cut short
    server.files["/widget.tar.xz"] = broken
    sha = hashlib.sha256(broken).hexdigest()
    with pytest.raises(DatasetError, match=r"widget\.tar\.xz: cannot extract archive"):
        download_mvtec(tmp_path, ["widget"], manifest=_manifest(server, sha))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".downloads"]  # no widget/


def test_cli_download_with_manifest_file(server, tmp_path, capsys):
    _, sha = _serve(server, "widget.tar.xz", ("widget",))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"widget": {"url": f"{server.url}/widget.tar.xz",
                                               "sha256": sha}}))
    root = tmp_path / "data"
    assert run_app(["data", "download", str(root), "--category", "widget",
                    "--manifest", str(manifest)]) == 0
    assert "ready" in capsys.readouterr().out and load_category(root / "widget").train
    manifest.write_text("{not json")
    assert run_app(["data", "download", str(root), "--manifest", str(manifest)]) == 1
    assert "invalid download manifest" in capsys.readouterr().err


# --------------------------------------------------------------------------- other datasets
def _tar_folder(base: Path, names: list[str], prefix: str = "") -> bytes:
    """A tar.xz of ``base/<name>`` for each name, under an optional wrapping folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name in names:
            tar.add(base / name, arcname=f"{prefix}{name}")
    return buf.getvalue()


def test_dataset_tables_have_published_checksums():
    expected = {"mvtec_ad": MVTEC_CATEGORIES, "loco": LOCO_CATEGORIES,
                "mvtec_ad2": MVTEC_AD2_CATEGORIES, "visa": VISA_CATEGORIES}
    for name, table in DATASETS.items():
        full = table["all"]
        assert full.categories == expected[name]
        assert full.url.startswith("https://") and full.url.endswith(full.filename)
        assert full.sha256 is not None and len(full.sha256) == 64
        int(full.sha256, 16)
    assert DATASETS["visa"]["all"].extra == ("split_csv", "LICENSE-DATASET")


def test_loco_archive_wrapped_in_a_top_folder(server, tmp_path):
    src = tmp_path / "src"
    make_loco_dataset(src, "pushpins", n_train=2, n_validation=1, n_good=1, n_logical=1,
                      n_structural=1, size=32)
    make_loco_dataset(src, "screw_bag", n_train=1, n_validation=1, n_good=1, n_logical=1,
                      n_structural=1, size=32)
    data = _tar_folder(src, ["pushpins", "screw_bag"], prefix="mvtec_loco_anomaly_detection/")
    server.files["/loco.tar.xz"] = data
    table = {"all": Archive("loco.tar.xz", f"{server.url}/loco.tar.xz",
                            hashlib.sha256(data).hexdigest(), ("pushpins", "screw_bag"))}
    root = tmp_path / "loco"
    (folder,) = download_dataset("loco", root, ["pushpins"], manifest=table)
    assert folder == root / "pushpins" and sorted(p.name for p in root.iterdir()) == ["pushpins"]
    loaded = layouts.load_category(root, "pushpins")
    assert loaded.layout == "loco" and len(loaded.validation) == 1 and len(loaded.test) == 3


def test_visa_archive_brings_its_split_files(server, tmp_path):
    src = tmp_path / "src"
    make_visa_dataset(src, "pcb1", n_train=3, n_good=1, n_bad=1, size=32)
    (src / "LICENSE-DATASET").write_text("CC BY 4.0")
    data = _tar_folder(src, ["pcb1", "split_csv", "LICENSE-DATASET"])
    server.files["/VisA.tar"] = data
    table = {"all": Archive("VisA.tar", f"{server.url}/VisA.tar", hashlib.sha256(data).hexdigest(),
                            ("pcb1", "pcb2"), extra=("split_csv", "LICENSE-DATASET"))}
    root = tmp_path / "visa"
    download_dataset("visa", root, ["pcb1"], manifest=table)
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE-DATASET", "pcb1", "split_csv"]
    assert len(layouts.load_category(root, "pcb1").train) == 3
    n = len(server.requests)
    download_dataset("visa", root, ["pcb1"], manifest=table)  # present: nothing fetched
    assert len(server.requests) == n


def test_realiad_and_unknown_datasets_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="Real-IAD is distributed by its authors on request"):
        download_dataset("realiad", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'mvtec3d'"):
        download_dataset("mvtec3d", tmp_path)
    assert list(tmp_path.iterdir()) == []
