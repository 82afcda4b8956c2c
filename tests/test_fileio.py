"""Files and folders clipsim writes get the permissions of the user's umask (collaborators on a shared filesystem
read the report and manifests), and a read-only workspace refuses writes at the lowest level too."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from clipsim import fileio
from clipsim.cli import main
from clipsim.errors import ReadOnlyError
from clipsim.workspace import Workspace


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                       (0o077, 0o600, 0o700)])
def test_atomic_files_and_temp_dirs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert fileio.current_umask() == mask
    ws = Workspace.create(tmp_path / "ws")
    fileio.write_json(ws.path("a", "b.json"), {"x": 1})
    folder = fileio.make_temp_dir(ws.root, ".m.", ".tmp")
    assert _mode(ws.path("clipsim.json")) == _mode(ws.path("a", "b.json")) == file_mode
    assert _mode(folder) == _mode(ws.path("a")) == dir_mode


def test_manifests_and_reports_are_readable_by_the_group_and_others(demo_ws, tmp_path, umask, capsys):
    umask(0o022)
    root = tmp_path / "ws"
    shutil.copytree(demo_ws.root, root)
    assert main(["prune", "--workspace", str(root), "--rule", "near", "--keep-fraction", "0.5", "--name", "half"]) == 0
    assert main(["report", "--workspace", str(root)]) == 0
    capsys.readouterr()
    manifest = root / "manifests" / "half"
    assert _mode(manifest) == 0o755 and {_mode(p) for p in manifest.iterdir()} == {0o644}
    assert {_mode(p) for p in (root / "reports").iterdir()} == {0o644}


def test_read_only_mode_refuses_writes_inside_a_workspace_only(tmp_path, monkeypatch):
    ws = Workspace.create(tmp_path / "ws")
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError, match="cannot write .*x.json: this workspace is served read-only"):
        fileio.write_json(ws.path("deep", "x.json"), {})
    with pytest.raises(ReadOnlyError):
        fileio.make_temp_dir(ws.root, ".m.", ".tmp")
    assert sorted(p.name for p in ws.root.iterdir()) == ["clipsim.json"]
    fileio.write_json(tmp_path / "outside.json", {})  # a file outside any workspace (a download, --out) is fine
    assert (tmp_path / "outside.json").exists()
