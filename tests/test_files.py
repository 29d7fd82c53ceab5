"""The shared file helpers: atomic writes, the one directory swap, hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from defectmap.errors import DefectmapError
from defectmap.files import (
    atomic_output_dir,
    replace_dir,
    sha256_file,
    sha256_tree,
    to_jsonable,
    write_json,
)


def test_to_jsonable_and_write_json_are_strict(tmp_path: Path) -> None:
    payload = {"a": np.float32(0.25), "b": np.array([1, 2]), "c": float("inf"),
               "d": Path("x/y"), "e": np.bool_(True)}
    assert to_jsonable(payload) == {"a": 0.25, "b": [1, 2], "c": None, "d": "x/y", "e": True}
    write_json(tmp_path / "p.json", payload)
    assert json.loads((tmp_path / "p.json").read_text())["a"] == 0.25
    assert list(tmp_path.iterdir()) == [tmp_path / "p.json"]  # no temp file left


def test_atomic_output_dir_keeps_previous_on_interrupt(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    with atomic_output_dir(out, "metrics.json") as tmp:
        (tmp / "metrics.json").write_text('{"v": 1}')
    assert json.loads((out / "metrics.json").read_text()) == {"v": 1}
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out, "metrics.json") as tmp:
        (tmp / "metrics.json").write_text('{"v": 2}')
        raise KeyboardInterrupt
    assert json.loads((out / "metrics.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temp folder left
    with atomic_output_dir(out, "metrics.json") as tmp:
        (tmp / "metrics.json").write_text('{"v": 3}')
    assert json.loads((out / "metrics.json").read_text()) == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_atomic_output_dir_refuses_unrelated_folder(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(DefectmapError, match="refusing to replace"):
        with atomic_output_dir(precious, "metrics.json"):
            pass
    assert (precious / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DefectmapError, match="not a folder"):
        with atomic_output_dir(tmp_path / "file", "x"):
            pass


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import defectmap.files as files

    # The fallback for systems that cannot exchange two folders: two renames.
    monkeypatch.setattr(files, "exchange_dirs", lambda a, b: False)
    target, new = tmp_path / "model", tmp_path / ".model.tmp"
    target.mkdir()
    (target / "model.json").write_text("old")
    new.mkdir()
    (new / "model.json").write_text("new")
    real_replace = os.replace
    calls = []

    def second_rename_fails(src: object, dst: object) -> None:
        calls.append((Path(str(src)).name, Path(str(dst)).name))
        if len(calls) == 2:  # target -> backup succeeded, new -> target fails
            raise OSError("disk went away")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk went away"):
        replace_dir(new, target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "model.json").read_text() == "old"  # restored
    assert (new / "model.json").read_text() == "new"  # the caller cleans up its temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp", "model"]  # no backup

    replace_dir(new, target)
    assert (target / "model.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_hashes_match_hashlib_and_track_names_and_bytes(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(payload)
    (tmp_path / "m.json").write_text("{}")
    assert sha256_file(tmp_path / "a" / "w.bin") == hashlib.sha256(payload).hexdigest()
    expected = hashlib.sha256()
    for name, data in ((b"a/w.bin", payload), (b"m.json", b"{}")):
        expected.update(len(name).to_bytes(8, "little") + name)
        expected.update(len(data).to_bytes(8, "little") + data)
    first = sha256_tree(tmp_path)
    assert first == expected.hexdigest()
    (tmp_path / "m.json").rename(tmp_path / "n.json")  # same bytes, another name
    assert sha256_tree(tmp_path) != first


def test_replace_dir_never_leaves_the_path_missing(tmp_path: Path) -> None:
    """A reader polling the folder from another process never finds it missing (issue 12.4).

    The previous swap renamed the old folder away and then the new one in: a reader that
    looked in between (a service reloading its model) found no model at all.
    """
    import subprocess
    import sys

    from defectmap.files import make_temp_dir

    if not sys.platform.startswith("linux"):
        pytest.skip("the atomic folder exchange is Linux's renameat2")
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.json").write_text("0")
    stop = tmp_path / "stop"
    probe = (
        "import os\n"
        f"path, stop = {str(target / 'model.json')!r}, {str(stop)!r}\n"
        "missing = probes = 0\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(stop):\n"
        "    probes += 1\n"
        "    try:\n"
        "        os.stat(path)\n"
        "    except FileNotFoundError:\n"
        "        missing += 1\n"
        "print(missing, probes)\n"
    )
    reader = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "ready\n"
        for version in range(1, 301):
            new = make_temp_dir(tmp_path, prefix=".model.tmp-")
            (new / "model.json").write_text(str(version))
            replace_dir(new, target)
        stop.write_text("")
        missing, probes = map(int, reader.communicate(timeout=60)[0].split())
    finally:
        reader.kill()
    assert probes > 1000  # the reader really looked, many times per swap
    assert missing == 0
    assert (target / "model.json").read_text() == "300"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "stop"]  # no leftovers


def test_output_folder_with_foreign_files_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_output_dir(out, "model.json", owned=("model.json", "weights.bin")) as tmp:
        (tmp / "model.json").write_text("1")
    (out / "notes.txt").write_text("my notes")
    (out / ".git").mkdir()
    with pytest.raises(DefectmapError, match=r"not part of this output \(\.git, notes\.txt\)"):
        with atomic_output_dir(out, "model.json", owned=("model.json", "weights.bin")):
            raise AssertionError("must refuse before yielding")
    assert (out / "notes.txt").read_text() == "my notes" and (out / "model.json").exists()
    (out / "notes.txt").unlink()
    (out / ".git").rmdir()
    with atomic_output_dir(out, "model.json", owned=("model.json", "weights.bin")) as tmp:
        (tmp / "model.json").write_text("2")
        (tmp / "weights.bin").write_text("w")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.bin"]
    assert (out / "model.json").read_text() == "2"
