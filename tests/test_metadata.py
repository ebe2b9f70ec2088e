"""The metadata table is the same as medmnist 3.0.2's INFO, and the shared files match its MD5s."""

from __future__ import annotations

import pytest

from helpers import shared_file
from medmnist_pipeline.files import md5sum
from medmnist_pipeline.metadata import DATASETS, SIZES, TASKS


def test_the_twelve_2d_datasets_at_four_sizes() -> None:
    assert len(DATASETS) == 12
    for info in DATASETS.values():
        assert info.task in TASKS and set(info.md5) == set(SIZES) and info.n_channels in (1, 3)
    assert DATASETS["pathmnist"].url(28) == "https://zenodo.org/records/10519652/files/pathmnist.npz?download=1"
    assert DATASETS["chestmnist"].url(224) == "https://zenodo.org/records/10519652/files/chestmnist_224.npz?download=1"
    assert DATASETS["octmnist"].file_name(64) == "octmnist_64.npz"


def test_table_equals_medmnist_info() -> None:
    info_module = pytest.importorskip(
        "medmnist.info", reason="medmnist not installed (pip install --no-deps medmnist==3.0.2)"
    )
    official = {flag: i for flag, i in info_module.INFO.items() if not flag.endswith("3d")}
    assert set(official) == set(DATASETS)
    for flag, i in official.items():
        ours = DATASETS[flag]
        assert ours.task == i["task"]
        assert ours.labels == tuple(i["label"][str(k)] for k in range(len(i["label"])))
        assert ours.n_channels == i["n_channels"] and ours.n_samples == i["n_samples"]
        assert ours.md5 == {28: i["MD5"], 64: i["MD5_64"], 128: i["MD5_128"], 224: i["MD5_224"]}
        assert [ours.url(s) for s in SIZES] == [i["url"], i["url_64"], i["url_128"], i["url_224"]]


@pytest.mark.parametrize("flag", ["pneumoniamnist", "breastmnist"])
def test_shared_files_match_the_official_md5(flag: str) -> None:
    assert md5sum(shared_file(f"{flag}.npz")) == DATASETS[flag].md5[28]
