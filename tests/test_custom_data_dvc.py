"""Your own data the way users run it: `dvc repro` in a fresh git clone, with `data.flag: custom` and an absolute
`data.custom.path` outside the project (dvc.yaml declares data/raw as the download stage's output whatever the data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import REPO, make_npz
from test_pipeline_dvc import new_project, sh


@pytest.mark.e2e
# (~40 s: a real `dvc repro` in a clone; runs by default: test the way users run it)
def test_dvc_repro_download_of_custom_data_in_a_fresh_clone(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    source = make_npz(tmp_path / "elsewhere" / "mine.npz", task="multi-class", n_labels=3, counts=(30, 10, 10))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["flag"] = "custom"
    params["data"]["custom"] = {"path": str(source), "task": "multi-class", "labels": ["a", "b", "c"]}
    origin, env = new_project(tmp_path, params)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path, env=env)
    sh("dvc", "repro", "download", cwd=clone, env=env)
    assert json.loads((clone / "data/raw/custom-source.json").read_text())["path"] == str(source)
    assert json.loads((clone / "data/prepared/meta.json").read_text())["labels"] == ["a", "b", "c"]
    again = sh("dvc", "repro", "download", cwd=clone, env=env)
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout, again.stdout
