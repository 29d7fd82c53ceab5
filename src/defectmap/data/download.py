"""Download MVTec AD, MVTec LOCO AD, MVTec AD 2 and VisA: resumable, SHA-256 verified,
extracted atomically.

How a category is fetched
-------------------------
1. The archive is downloaded into ``ROOT/.downloads/<archive>.part``. When a ``.part`` file
   is already there, the transfer resumes with an HTTP ``Range`` request; a transfer cut in
   the middle is retried (resuming) up to ``retries`` times, and the ``.part`` file is kept
   so that running the command again also resumes.
2. The complete file is verified against its SHA-256. **A checksum is required**: an archive
   without a known SHA-256 is not downloaded (pass a manifest with one). On a mismatch the
   file is deleted and a :class:`~defectmap.errors.DatasetError` names it.
3. The archive is extracted into a temporary folder beside the target
   (``ROOT/.extract-*``) and each category folder is then moved into place with one
   ``os.replace``; a category therefore appears complete or not at all. The temporary
   folder is removed even on errors or Ctrl-C.

Archives and checksums
----------------------
:data:`MVTEC_ARCHIVES` holds the official archive URLs in one table. MVTec publishes per-
category archives and one archive with all 15 categories. Only the full archive's SHA-256 is
known here (it is the one widely recorded, e.g. by anomalib); the per-category archives have
``sha256=None``. When a requested category's own archive has no checksum, the verified full
archive (about 5.3 GB) is used instead and only the requested categories are extracted from
it. To use per-category archives, pass a ``manifest`` (a mapping or a JSON file
``{"bottle": {"url": ..., "sha256": ...}, ...}``) that gives their checksums.

Other datasets (:data:`DATASETS`)
---------------------------------
Each is one archive with a published SHA-256 (the ones anomalib verifies):

* ``loco``: ``mvtec_loco_anomaly_detection.tar.xz`` (MVTec LOCO AD, CC BY-NC-SA 4.0);
* ``mvtec_ad2``: ``mvtec_ad_2.tar.gz`` (MVTec AD 2, CC BY-NC-SA 4.0, about 32.7 GB);
* ``visa``: ``VisA_20220922.tar`` (VisA, CC BY 4.0); its ``split_csv/`` and licence file are
  extracted with the objects.

Per-category archives and checksums are not published for these; a category is extracted
from the full archive. An archive that wraps everything in one top folder is unwrapped.
Real-IAD is given out by its authors on request (no public URL): download it there and
extract it under the dataset root.

The MVTec datasets are licensed CC BY-NC-SA 4.0 by MVTec Software GmbH; VisA CC BY 4.0 by
Amazon.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from defectmap.constants import (
    LOCO_CATEGORIES,
    MVTEC_AD2_CATEGORIES,
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
)
from defectmap.data.mvtec import is_category_dir
from defectmap.errors import DatasetError, OfflineError
from defectmap.files import make_temp_dir, replace_dir, sha256_file
from defectmap.progress import ProgressCallback, track

__all__ = ["DATASETS", "LOCO_ARCHIVES", "MVTEC_AD2_ARCHIVES", "MVTEC_ARCHIVES", "VISA_ARCHIVES",
           "Archive", "download_dataset", "download_mvtec", "load_manifest"]

_CHUNK = 1 << 20
FULL_ARCHIVE = "all"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive.

    Attributes
    ----------
    filename : the archive's file name (``"bottle.tar.xz"``).
    url : where to download it from.
    sha256 : expected SHA-256 (lower-case hex), or ``None`` when unknown (then it is refused).
    categories : category folders at the top of the archive.
    size : expected size in bytes, if known (for the progress bar only).
    extra : other top-level entries extracted with any category (VisA's ``split_csv``).
    """

    filename: str
    url: str
    sha256: str | None
    categories: tuple[str, ...]
    size: int | None = None
    extra: tuple[str, ...] = ()


_SHARE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download"
_PER_CATEGORY_PATHS = {
    "bottle": "420937370-1629951468",
    "cable": "420937413-1629951498",
    "capsule": "420937454-1629951595",
    "carpet": "420937484-1629951672",
    "grid": "420937487-1629951814",
    "hazelnut": "420937545-1629951845",
    "leather": "420937607-1629951964",
    "metal_nut": "420937637-1629952063",
    "pill": "420938129-1629953099",
    "screw": "420938130-1629953152",
    "tile": "420938133-1629953189",
    "toothbrush": "420938134-1629953256",
    "transistor": "420938166-1629953277",
    "wood": "420938383-1629953354",
    "zipper": "420938385-1629953449",
}
_PILL_SHARE = "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download"

#: The official MVTec AD archives, keyed by category name, plus ``"all"`` (every category).
MVTEC_ARCHIVES: dict[str, Archive] = {
    name: Archive(
        filename=f"{name}.tar.xz",
        url=f"{_PILL_SHARE if name == 'pill' else _SHARE}/{path}/{name}.tar.xz",
        sha256=None,  # not known for certain; the verified full archive is used instead
        categories=(name,),
    )
    for name, path in _PER_CATEGORY_PATHS.items()
}
MVTEC_ARCHIVES[FULL_ARCHIVE] = Archive(
    filename="mvtec_anomaly_detection.tar.xz",
    url=f"{_SHARE}/420938113-1629952094/mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    categories=MVTEC_CATEGORIES,
    size=5_264_982_680,
)

#: MVTec LOCO AD, all five categories (URL and SHA-256 as in anomalib's MVTecLOCO).
LOCO_ARCHIVES: dict[str, Archive] = {FULL_ARCHIVE: Archive(
    filename="mvtec_loco_anomaly_detection.tar.xz",
    url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/"
        "430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz",
    sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
    categories=LOCO_CATEGORIES,
)}
#: MVTec AD 2, all eight categories (URL and SHA-256 as in anomalib's MVTecAD2).
MVTEC_AD2_ARCHIVES: dict[str, Archive] = {FULL_ARCHIVE: Archive(
    filename="mvtec_ad_2.tar.gz",
    url="https://www.mydrive.ch/shares/121573/7f68fe2c4f7c2ceaa08f463aaeb2f414/download/"
        "466712769-1743422799/mvtec_ad_2.tar.gz",
    sha256="c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4",
    categories=MVTEC_AD2_CATEGORIES,
)}
#: VisA, all twelve objects plus the official split files (SHA-256 as in anomalib's Visa).
VISA_ARCHIVES: dict[str, Archive] = {FULL_ARCHIVE: Archive(
    filename="VisA_20220922.tar",
    url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
    sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    categories=VISA_CATEGORIES,
    size=1_929_840_640,
    extra=("split_csv", "LICENSE-DATASET"),
)}
#: Downloadable datasets: name -> archive table.
DATASETS: dict[str, dict[str, Archive]] = {
    "mvtec_ad": MVTEC_ARCHIVES,
    "loco": LOCO_ARCHIVES,
    "mvtec_ad2": MVTEC_AD2_ARCHIVES,
    "visa": VISA_ARCHIVES,
}
_ON_REQUEST = {
    "realiad": "Real-IAD is distributed by its authors on request "
               "(https://realiad4ad.github.io/Real-IAD/); download realiad_1024 and "
               "realiad_jsons there and extract them into the dataset root",
}


def load_manifest(path: str | Path) -> dict[str, Archive]:
    """Read a manifest JSON: ``{key: {"url", "sha256", ["filename", "categories", "size"]}}``.

    ``filename`` defaults to the URL's last path component, ``categories`` to ``[key]``.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = {}
        for key, entry in raw.items():
            url = str(entry["url"])
            filename = entry.get("filename") or Path(urllib.parse.urlparse(url).path).name
            categories = tuple(entry.get("categories") or [key])
            sha = entry.get("sha256")
            manifest[key] = Archive(filename, url, sha.lower() if sha else None, categories,
                                    entry.get("size"))
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: invalid download manifest ({exc})") from exc


def _offline(url: str, reason: object) -> OfflineError:
    host = urllib.parse.urlparse(url).netloc or url
    return OfflineError(
        f"cannot reach {host} to download {url} ({reason}); you seem to be offline. "
        f"Retry when online (partial downloads resume), or download the archive elsewhere "
        f"and extract it into the dataset root."
    )


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        block = response.read(_CHUNK)
        if not block:
            return
        yield block


class _Interrupted(Exception):
    """The connection broke in the middle of a transfer (resumable)."""


def _transfer(
    archive: Archive, part: Path, timeout: float, progress: ProgressCallback | None
) -> None:
    """Download (or resume) ``archive`` into ``part`` once; raise _Interrupted on a cut."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(archive.url, headers={"User-Agent": "defectmap"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the file is complete
            return
        raise DatasetError(f"download of {archive.url} failed: HTTP {exc.code} {exc.reason}") \
            from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(archive.url, getattr(exc, "reason", exc)) from exc
    with response:
        append = have > 0 and response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        # Progress only: the server's length, else the size the archive table gives.
        shown = expected
        if shown is None and archive.size:
            shown = max(archive.size - (have if append else 0), 0)
        total = None if shown is None else -(-shown // _CHUNK)
        received = 0
        with open(part, "ab" if append else "wb") as fh:
            try:
                for block in track(_chunks(response), f"downloading {archive.filename}",
                                   progress, total):
                    fh.write(block)
                    received += len(block)
            except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                raise _Interrupted(str(exc)) from exc
        if expected is not None and received < expected:
            raise _Interrupted(f"received {received} of {expected} bytes")


def _fetch(
    archive: Archive, downloads: Path, timeout: float, retries: int,
    progress: ProgressCallback | None,
) -> Path:
    """Return the verified archive file in ``downloads``, downloading or resuming it."""
    if archive.sha256 is None:
        raise DatasetError(
            f"no SHA-256 known for {archive.filename} ({archive.url}); refusing an unverified "
            f"download. Pass a manifest that gives its checksum."
        )
    final = downloads / archive.filename
    if final.exists() and sha256_file(final) == archive.sha256:
        return final
    part = downloads / f"{archive.filename}.part"
    for attempt in range(retries + 1):
        try:
            _transfer(archive, part, timeout, progress)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DatasetError(
                    f"download of {archive.url} was interrupted ({exc}); "
                    f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}, "
                    f"run the command again to resume"
                ) from exc
    actual = sha256_file(part)
    if actual != archive.sha256:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"{archive.filename}: SHA-256 mismatch (expected {archive.sha256}, got {actual}); "
            f"the downloaded file was deleted and nothing was extracted"
        )
    os.replace(part, final)
    return final


def _wrapper(names: list[str], wanted: set[str]) -> str | None:
    """The single top folder that wraps every entry, when the wanted ones sit inside it."""
    tops = {Path(n).parts[0] for n in names if Path(n).parts}
    if tops & wanted or len(tops) != 1:
        return None
    (top,) = tops
    inner = {Path(n).parts[1] for n in names if len(Path(n).parts) > 1}
    return top if inner & wanted else None


def _extract(archive_file: Path, categories: list[str], root: Path,
             extra: tuple[str, ...] = ()) -> list[Path]:
    """Extract ``categories`` (and ``extra``) into ``root``, one atomic rename each."""
    tmp = make_temp_dir(root, prefix=".extract-")
    wanted = set(categories) | set(extra)
    try:
        try:
            with tarfile.open(archive_file, "r:*") as tar:
                members = tar.getmembers()
                top = _wrapper([m.name for m in members], wanted)
                chosen = []
                for member in members:
                    parts = Path(member.name).parts
                    if top is not None:
                        parts = parts[1:] if parts[:1] == (top,) else ()
                    if parts and parts[0] in wanted:
                        member.name = str(Path(*parts))
                        chosen.append(member)
                tar.extractall(tmp, members=chosen, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{archive_file}: cannot extract archive ({exc})") from exc
        for name in categories:
            if not (tmp / name).is_dir():
                raise DatasetError(f"{archive_file}: archive has no category folder {name}/")
        for name in [*categories, *extra]:
            if (tmp / name).exists() and not (root / name).exists():
                replace_dir(tmp / name, root / name)
        return [root / name for name in categories]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _present(dataset: str, root: Path, category: str) -> bool:
    if dataset == "visa":
        return (root / category / "Data").is_dir() and (root / "split_csv" / "1cls.csv").is_file()
    return is_category_dir(root / category)


def download_dataset(
    dataset: str,
    root: str | Path,
    categories: list[str] | None = None,
    base_url: str | None = None,
    manifest: Mapping[str, Archive] | str | Path | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    keep_archives: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Download and extract categories of one dataset of :data:`DATASETS` into ``root``.

    Parameters
    ----------
    dataset : ``"mvtec_ad"``, ``"loco"``, ``"mvtec_ad2"`` or ``"visa"``.
    root : dataset root; category ``c`` ends up in ``root / c`` (VisA: also
        ``root / "split_csv"``).
    categories : categories to fetch (default: all). Ones already present are skipped.
    base_url : a mirror; each archive is then fetched from ``base_url + "/" + filename``.
    manifest : archive table (mapping or JSON file) replacing the dataset's own.
    timeout : seconds to wait for the server on connect and on each read.
    retries : automatic resumes after a transfer is cut in the middle.
    keep_archives : keep the verified archives in ``root/.downloads`` after extraction.
    progress : reports ``(task, MiB done, MiB total)`` (see :mod:`defectmap.progress`).

    Returns
    -------
    list of Path
        The category folders, in the order requested.

    Raises
    ------
    OfflineError
        The host cannot be reached.
    DatasetError
        Unknown dataset or category, no checksum known, checksum mismatch, interrupted
        transfer (after the retries; run again to resume) or an archive without the
        expected folder.
    """
    root = Path(root)
    if dataset in _ON_REQUEST:
        raise DatasetError(_ON_REQUEST[dataset])
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; known: "
                           f"{', '.join([*DATASETS, *_ON_REQUEST])}")
    if isinstance(manifest, str | Path):
        table = load_manifest(manifest)
    else:
        table = dict(manifest) if manifest is not None else dict(DATASETS[dataset])
    every = [c for a in table.values() for c in a.categories]
    wanted = list(dict.fromkeys(categories)) if categories else list(dict.fromkeys(every))
    known = {c for a in table.values() for c in a.categories}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise DatasetError(f"unknown categories {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known))}")
    root.mkdir(parents=True, exist_ok=True)
    missing = [c for c in wanted if not _present(dataset, root, c)]

    # Plan: each category's own verified archive, else a verified archive holding it.
    plan: dict[str, tuple[Archive, list[str]]] = {}
    for name in missing:
        own = table.get(name)
        options = ([own] if own is not None else []) + [
            a for key, a in table.items() if key != name and name in a.categories
        ]
        verified = [a for a in options if a.sha256]
        chosen = verified[0] if verified else (options[0] if options else None)
        if chosen is None:  # pragma: no cover - excluded by the "unknown" check
            raise DatasetError(f"no archive holds category {name}")
        plan.setdefault(chosen.filename, (chosen, []))[1].append(name)

    downloads = root / ".downloads"
    try:
        for archive, names in plan.values():
            if base_url:
                archive = replace(archive, url=f"{base_url.rstrip('/')}/{archive.filename}")
            downloads.mkdir(exist_ok=True)
            archive_file = _fetch(archive, downloads, timeout, retries, progress)
            _extract(archive_file, names, root, archive.extra)
            if not keep_archives:
                archive_file.unlink(missing_ok=True)
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return [root / c for c in wanted]


def download_mvtec(
    root: str | Path,
    categories: list[str] | None = None,
    base_url: str | None = None,
    manifest: Mapping[str, Archive] | str | Path | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    keep_archives: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Download and extract MVTec AD categories into ``root`` (see :func:`download_dataset`)."""
    return download_dataset("mvtec_ad", root, categories, base_url, manifest, timeout,
                            retries, keep_archives, progress)
