"""`medmnist-pipeline ui` on a real pipeline run, driven in a real headless Chromium.

A tiny `dvc repro` of every stage fills the project's own store (sqlite mlflow.db + mlruns/), a second train run
with another learning rate gives two runs to compare, then the test starts the UI with the command a user types,
opens the experiment like a user, and checks what the MLflow UI shows against params.yaml: every stage's run with a
param of its section and a metric it logs, the tuning trials nested under the tune run and the evaluate retrains under
evaluate, an artifact of the train run, and the compare view of the two train runs. A screenshot is saved at each
step into $UI_SCREENSHOTS (default: reports/ui-screenshots/ in the repository, kept by CI as artifacts).

Chromium is the system's (Debian: `apt-get install chromium`), driven by Playwright's Python client through
`executable_path`; Playwright's own browser download is never used. Without a Chromium binary the test skips.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from helpers import REPO, write_params
from test_pipeline_dvc import new_project, sh, tiny_pipeline, tracked_runs

SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS") or REPO / "reports" / "ui-screenshots")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STAGES = ["download", "augment", "baseline", "train", "tune", "evaluate"]
RUN_NAME_CELL = '[role=gridcell][col-id="attributes.`Run Name`"]'  # ag-grid cell of the runs table
TIMEOUT_MS = 30_000  # per wait; the first page of a busy 2-core machine took up to 10 s


def chromium() -> str:
    """The system Chromium: $CHROMIUM if set, else the first of CHROMIUM_NAMES on PATH; skip without one."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found or not Path(found).exists():
        pytest.skip(
            f"no Chromium binary (none of $CHROMIUM, {', '.join(CHROMIUM_NAMES)} found; Debian: apt-get install "
            "chromium)"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def expected_on_run_page(params: dict) -> dict[str, tuple[str, str, str]]:
    """stage -> (a param of the section it reads, its value as params.yaml has it, a metric the stage logs)."""
    return {
        "download": ("data.flag", params["data"]["flag"], "n_train"),
        "augment": ("augment.copies", str(params["augment"]["copies"]), "augment_seconds"),
        "baseline": ("baseline.max_epochs", str(params["baseline"]["max_epochs"]), "val/auc"),
        "train": ("train.optimizer.lr", str(params["train"]["optimizer"]["lr"]), "val/auc"),
        "tune": ("tune.n_trials", str(params["tune"]["n_trials"]), "best/value"),
        "evaluate": (
            "evaluate.bootstrap.resamples",
            str(params["evaluate"]["bootstrap"]["resamples"]),
            "test/auc/tuned",
        ),
    }


def children_by_parent(runs: list) -> dict[str, list[str]]:
    """Parent run name -> names of its nested runs, from the store itself (what the UI must show)."""
    names = {r.info.run_id: r.info.run_name for r in runs}
    nested: dict[str, list[str]] = {}
    for run in runs:
        if parent := run.data.tags.get("mlflow.parentRunId"):
            nested.setdefault(names[parent], []).append(run.info.run_name)
    return nested


def drive_ui(
    base: str, browser_path: str, params: dict, second_lr: str, nested: dict[str, list[str]], n_runs: int, shots: Path
) -> list[Path]:
    """Every check in the browser; returns the screenshots taken (one more, failure.png, if a check fails)."""
    from playwright.sync_api import expect, sync_playwright

    taken: list[Path] = []
    (shots / "failure.png").unlink(missing_ok=True)  # from an earlier run
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)

        def shot(name: str) -> None:
            taken.append(shots / f"{name}.png")
            page.screenshot(path=taken[-1])

        def run_link(name: str):  # the run-name links of the runs table
            return page.locator(RUN_NAME_CELL).get_by_role("link", name=name, exact=True)

        def row_of(link):  # ag-grid row element of a cell; row-id is the run id, row-index the position
            return link.locator("xpath=ancestor::div[@role='row'][1]")

        try:
            # 1. Home page: the project's experiment is listed; switch the UI to "Model training" and open it.
            page.goto(f"{base}/")
            experiment = page.get_by_role("link", name=params["tracking"]["experiment"], exact=True).first
            expect(experiment).to_be_visible()
            shot("01-home")
            model_training = page.get_by_role("button", name="Model training", exact=True)
            if model_training.is_visible():  # the home page's GenAI / model-training switch
                model_training.click()
            experiment.click()

            # 2. The runs table: one run per stage (two of train), every run of the store counted.
            for stage in STAGES:
                expect(run_link(stage).first).to_be_visible()
            expect(run_link("train")).to_have_count(2)
            expect(page.get_by_text(f"{n_runs} matching runs")).to_be_visible()
            close_assistant = page.get_by_role("button", name="Close", exact=True)
            if close_assistant.is_visible():  # the MLflow Assistant side panel takes a third of the width
                close_assistant.click()
            shot("02-runs")
            runs_url = page.url

            # 3. Nested runs: tuning trials under tune, retrains under evaluate (the table collapses children).
            for parent in ("tune", "evaluate"):
                children = sorted(nested[parent])
                assert children, f"no nested runs under {parent} in the store"
                first_child = run_link(children[0])
                if not first_child.is_visible():
                    parent_link = page.get_by_role("link", name=parent, exact=True)
                    page.locator(RUN_NAME_CELL).filter(has=parent_link).get_by_role("button").click()
                parent_index = int(row_of(run_link(parent)).first.get_attribute("row-index"))
                indices = []
                for child in children:
                    expect(run_link(child)).to_be_visible()
                    indices.append(int(row_of(run_link(child)).first.get_attribute("row-index")))
                right_under = list(range(parent_index + 1, parent_index + 1 + len(children)))
                assert sorted(indices) == right_under, f"{children} are not listed right under {parent}"
            assert all(re.fullmatch(r"tune/trial-\d+", name) for name in nested["tune"]), nested["tune"]
            assert all(name.startswith("evaluate/") for name in nested["evaluate"]), nested["evaluate"]
            shot("03-nested-runs")

            # 4. Each stage's run page: a param of its section with params.yaml's value, a metric it logs.
            hrefs = {stage: run_link(stage).last.get_attribute("href") for stage in STAGES}  # last: the oldest
            for i, (stage, (param, value, metric)) in enumerate(expected_on_run_page(params).items()):
                page.goto(f"{base}/{hrefs[stage]}")
                expect(page.get_by_role("heading", name=stage, exact=True)).to_be_visible()
                page.get_by_placeholder("Search parameters").fill(param)
                param_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=param, exact=True))
                expect(param_row).to_contain_text(value)
                page.get_by_placeholder("Search metrics").fill(metric)
                metric_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=metric, exact=True))
                expect(metric_row).to_have_count(1)
                expect(metric_row).to_contain_text(re.compile(r"\d"))
                param_row.scroll_into_view_if_needed()
                shot(f"{4 + i:02d}-run-{stage}")

            # 5. Artifacts of the train run (file paths under mlruns/, read by the server): its curves plot.
            page.goto(f"{base}/{hrefs['train']}")
            page.get_by_role("tab", name="Artifacts", exact=True).click()
            page.locator('[data-testid=artifact-tree-node][artifact-name="train"]').click()
            for name in ("history.csv", "metrics.json"):
                expect(page.locator(f'[data-testid=artifact-tree-node][artifact-name="{name}"]')).to_be_visible()
            page.locator('[data-testid=artifact-tree-node][artifact-name="curves.png"]').click()
            expect(page.locator('img[alt="train/curves.png"]')).to_be_visible()
            shot("10-train-artifacts")

            # 6. Compare the two train runs: select both rows, Compare, the learning rates differ.
            page.goto(runs_url)
            for k in range(2):
                run_id = row_of(run_link("train").nth(k)).first.get_attribute("row-id")
                page.locator(f'div[role=row][row-id="{run_id}"] input[type=checkbox]').first.check()
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_text("Comparing 2 Runs", exact=False)).to_be_visible()
            page.get_by_role("switch", name="Parameters - Show diff only").click()
            lr_row = page.locator("tr").filter(has=page.get_by_role("rowheader", name="train.optimizer.lr", exact=True))
            expect(lr_row).to_contain_text(second_lr)
            expect(lr_row).to_contain_text(str(params["train"]["optimizer"]["lr"]))
            expect(page.get_by_role("link", name="val/auc", exact=True).first).to_be_attached()
            lr_row.scroll_into_view_if_needed()
            shot("11-compare-train-runs")
        except Exception:
            shot("failure")
            raise
        finally:
            browser.close()
    return taken


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.slow  # ~1.5 min (a pipeline run, then Chromium): it kept the default suite near 15 min; CI runs it
def test_ui_shows_every_stage_nested_runs_and_compare(tmp_path: Path, repo_params: dict) -> None:
    browser_path = chromium()
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    params = tiny_pipeline(repo_params)
    project, env = new_project(tmp_path, params)
    sh("dvc", "repro", cwd=project, env=env)

    # A second train run with another learning rate, while the UI starts (both take ~10 s on 2 cores).
    second_lr = "0.003"
    assert str(params["train"]["optimizer"]["lr"]) != second_lr
    edited = copy.deepcopy(params)
    edited["train"]["optimizer"]["lr"] = float(second_lr)
    write_params(project / "params.yaml", edited)
    train = subprocess.Popen(
        ["medmnist-pipeline", "train"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(
            ["medmnist-pipeline", "ui", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        train_output, _ = train.communicate(timeout=600)
        assert train.returncode == 0, train_output
        deadline = time.monotonic() + 180
        while not answers(f"{base}/health"):
            assert ui.poll() is None, f"medmnist-pipeline ui exited with {ui.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the UI did not answer in 180 s:\n{log.read_text()}"
            time.sleep(0.5)

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        runs = tracked_runs(project)
        taken = drive_ui(base, browser_path, params, second_lr, children_by_parent(runs), len(runs), SCREENSHOTS)
        assert all(p.is_file() and p.stat().st_size > 10_000 for p in taken), taken
    finally:
        if train.poll() is None:
            train.kill()
        if ui.poll() is None:
            ui.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
            raise
    # Ctrl-C: a short message, no traceback, exit 0, and nothing left listening.
    output = log.read_text()
    assert ui.returncode == 0, output
    assert f"MLflow UI: {base}" in output and "stopped" in output and "Traceback" not in output, output
    assert not answers(f"{base}/health")
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(port) in (p.info["cmdline"] or [])]
    assert not leftovers, f"server processes left running: {leftovers}"
