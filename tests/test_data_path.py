"""The bounded-memory data path inside the real stages: the in-RAM, memory-mapped and online-augmentation paths train
on the same pixels in the same order (same metrics), and DDP ranks on a mapped split stay within the budget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import make_npz, write_params
from medmnist_pipeline.stages import augment, baseline, download
from test_training import tiny, use_custom


def history(workdir: Path) -> str:
    return (workdir / "reports/baseline/history.csv").read_text()


def setup_data(workdir: Path, repo_params: dict, counts: tuple[int, int, int]) -> dict:
    # 64 px RGB: 12 KiB an image, so a 1 MiB budget holds the validation split but not the training split
    source = make_npz(workdir / "data.npz", size=64, channels=3, counts=counts)
    params = tiny(repo_params, epochs=2, copies=2)
    use_custom(params, source, "binary-class", ["no", "yes"])
    params["data"]["size"] = 64
    params["baseline"].update({"augmented": True, "batch_size": 16, "resume": "never"})
    params["loader"]["workers"] = 1
    write_params(workdir / "params.yaml", params)
    download.main("params.yaml")
    return params


def run_baseline(workdir: Path, params: dict, budget_mb: int, mode: str = "materialised") -> str:
    params["loader"]["memory_budget_mb"] = budget_mb
    params["augment"]["mode"] = mode
    write_params(workdir / "params.yaml", params)
    augment.main("params.yaml")
    baseline.main("params.yaml")
    return history(workdir)


def test_in_ram_mapped_and_online_paths_give_the_same_metrics(workdir: Path, repo_params: dict) -> None:
    params = setup_data(workdir, repo_params, counts=(120, 40, 8))
    in_ram = run_baseline(workdir, params, budget_mb=1024)
    mapped = run_baseline(workdir, params, budget_mb=1)  # training split and copies (1.4 MiB each) mapped
    online = run_baseline(workdir, params, budget_mb=1, mode="online")  # copies made in a worker process
    assert in_ram == mapped == online
    assert json.loads((workdir / "data/augmented/meta.json").read_text())["mode"] == "online"
    assert (workdir / "data/augmented/pipeline.json").is_file() and (workdir / "reports/augment/preview.png").is_file()


def test_a_budget_below_a_few_batches_names_the_setting(workdir: Path, repo_params: dict) -> None:
    from medmnist_pipeline.errors import PipelineError

    params = setup_data(workdir, repo_params, counts=(40, 16, 8))
    params["baseline"]["batch_size"] = 32  # 4 batches of 32 x 12 KiB: 1.5 MiB
    with pytest.raises(PipelineError, match=r"^loader.memory_budget_mb: 1 MiB cannot hold 4 batches of 32 images"):
        run_baseline(workdir, params, budget_mb=1)
    assert not (workdir / "models/baseline.ckpt").exists()


# In a fresh interpreter: forked from a long pytest process, the ranks would inherit its anonymous pages and touch
# them (Python's reference counts write to every object), so the measurement would see the suite, not the data path.
RANKS = textwrap.dedent(
    """
    import os
    import lightning.pytorch, mlflow, torch.distributed  # what the ranks use, imported once before they fork
    from medmnist_pipeline.memory import PeakAnon
    from medmnist_pipeline.stages import baseline
    with PeakAnon(tree=True, interval_s=0.005) as peak:
        baseline.main("params.yaml")
    ranks = [pid for pid in peak.by_pid if pid != os.getpid()]  # the forked ranks (and any helper process)
    print(len(ranks), max(peak.growth(pid) for pid in ranks))
    """
)


def test_ddp_ranks_on_a_mapped_split_stay_within_the_budget(workdir: Path, repo_params: dict) -> None:
    params = setup_data(workdir, repo_params, counts=(2_000, 40, 8))  # a 23 MiB training split, 2 copies
    params["baseline"]["trainer"].update({"devices": 2, "strategy": "ddp_fork", "deterministic": False})
    params["baseline"]["max_epochs"] = 1
    split = 2_000 * 64 * 64 * 3

    def largest_rank_growth(budget_mb: int) -> int:
        params["loader"]["memory_budget_mb"] = budget_mb
        write_params(workdir / "params.yaml", params)
        out = subprocess.run([sys.executable, "-c", RANKS], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        ranks, growth = out.stdout.split()[-2:]
        assert int(ranks) >= 2
        return int(growth)

    augment.main("params.yaml")
    mapped, in_ram = largest_rank_growth(budget_mb=1), largest_rank_growth(budget_mb=1024)
    print(f"largest rank's growth: mapped +{mapped / 2**20:.1f} MiB, in RAM +{in_ram / 2**20:.1f} MiB")
    # in RAM every rank holds both copies of the split (2 x 23 MiB; the originals are not read); mapped, none of
    # them (the page cache holds one copy of the file for both ranks): the budget (1 MiB), a few batches (0.2 MiB
    # each) and what a rank costs whatever the data (gloo, DDP's gradient buckets, threads' heaps): measured in a
    # fresh interpreter, mapped +12.8 MiB and in RAM +65.9 MiB
    assert in_ram - mapped > 1.5 * split, (mapped / 2**20, in_ram / 2**20)
    assert mapped < split * 0.75, mapped / 2**20
