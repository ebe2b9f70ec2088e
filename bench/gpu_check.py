"""The GPU check's steps, run by ``bench/gpu_check.sh`` (see bench/README.md, "GPU check"): one results file.

Steps, each timed, each one's failure recorded without stopping the others, under one overall deadline:

1. ``environment``: versions of the packages the stages need, and that they import (pydantic, optuna,
   optuna_integration, mlflow, albumentations, the project);
2. ``device``: nvidia-smi's name for the GPU, torch.cuda.get_device_name, torch and CUDA versions;
3. ``throughput_<size>px``: bench/gpu_throughput.py (official feeding vs ours, fp32 / bf16 / channels_last /
   compile), at 28 px, then (after the stages) at 128 px;
4. ``download``, ``augment``, ``baseline``, ``train``, ``tune``: the real ``medmnist-pipeline`` CLI in a temporary
   project folder (params.yaml there: the repo's own, with the few overrides listed in the results), tracking to
   that folder's sqlite store, reading the npz from ``MEDMNIST_MIRROR``.

``--mode device`` runs on the GPU at full size; ``--mode dry`` runs the same steps on the CPU at tiny sizes (a few
batches, one epoch, two trials; 32 px stands in for 128 px), to test the plumbing without a GPU. Nothing is written
into the repository: results go to ``--out``, the stages run in a temporary folder.

Results: ``<out>/gpu_check.json`` (everything), ``<out>/gpu_check.md`` (a short table), ``<out>/gpu_check.log``
(every step's output), rewritten after each step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "lightning",
    "torchmetrics",
    "numpy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "opencv-python-headless",
    "pydantic",
    "optuna",
    "optuna-integration",
    "mlflow-skinny",
    "mlflow",
    "SQLAlchemy",
    "alembic",
    "albumentations",
    "albucore",
    "medmnist-pipeline",
)
IMPORTS = "import pydantic, optuna, optuna_integration, mlflow, sqlalchemy, albumentations, medmnist_pipeline.cli"
STAGES = ("download", "augment", "baseline", "train", "tune")

# Per mode: the throughput runs, the per-step time caps (seconds) and the params overrides. Overrides name as few
# params keys as possible (the model sections are being reshaped); a key whose parent is missing is reported, not
# invented. tune.fixed's keys are dotted train paths, hence the tuples.
MODES: dict[str, dict[str, Any]] = {
    "device": {
        "throughput": {"batch_size": 128, "steps": 40, "warmup": 5, "limit": None, "compile_backend": "inductor"},
        "sizes": (28, 128),
        "deadline_s": 400,
        "caps": {"throughput": 150, "download": 60, "augment": 60, "baseline": 90, "train": 120, "tune": 150},
        "overrides": {
            ("baseline", "trainer", "accelerator"): "gpu",
            ("train", "trainer", "accelerator"): "gpu",
            ("tune", "n_trials"): 3,
            ("tune", "timeout_s"): 60,
        },
    },
    "dry": {
        "throughput": {"batch_size": 2, "steps": 1, "warmup": 1, "limit": 64, "compile_backend": "eager"},
        "sizes": (28, 32),
        "deadline_s": 900,
        "caps": {"throughput": 240, "download": 120, "augment": 120, "baseline": 180, "train": 180, "tune": 240},
        "overrides": {
            ("baseline", "trainer", "accelerator"): "cpu",
            ("train", "trainer", "accelerator"): "cpu",
            ("baseline", "max_epochs"): 1,
            ("train", "max_epochs"): 1,  # trials too: tune.fixed holds only what differs from train
            ("tune", "n_trials"): 2,
            ("tune", "timeout_s"): 120,
            ("augment", "copies"): 1,
        },
    },
}


class Check:
    """The results, written after every step."""

    def __init__(self, out: Path, mode: str, deadline_s: float, work: Path) -> None:
        self.out, self.mode, self.work = out, mode, work
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.log = out / "gpu_check.log"
        self.results: dict[str, Any] = {
            "mode": mode,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": platform.node(),
            "python": sys.executable,
            "deadline_s": deadline_s,
            "device": {},
            "steps": [],
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, cap_s: float, fn, *args: Any, skip: str | None = None) -> dict[str, Any]:
        """Run ``fn(record, budget, *args)`` as step ``name``: done, failed (its error kept) or skipped (``skip``
        says why, or out of time)."""
        record: dict[str, Any] = {"name": name, "status": "running"}
        self.results["steps"].append(record)
        budget = min(cap_s, self.left())
        if skip:
            record.update(status="skipped", error=skip)
        elif budget < 5:
            record.update(status="skipped", error=f"out of time: {self.left():.0f} s left of the deadline")
        else:
            t0 = time.monotonic()
            try:
                fn(record, budget, *args)
                record["status"] = "done"
            except Exception as exc:  # noqa: BLE001 - a failed step is a result; the next step runs
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
                if isinstance(exc, StepError):
                    record["output_tail"] = exc.output.strip().splitlines()[-25:]
            record["wall_s"] = round(time.monotonic() - t0, 1)
        took = f" in {record['wall_s']} s" if "wall_s" in record else ""
        print(f"[gpu_check] {name}: {record['status']}{took} {record.get('error', '')}", flush=True)
        self.save()
        return record

    def run(self, name: str, cmd: list[str], timeout: float, cwd: Path | None = None, env=None) -> str:
        """A subprocess whose output goes to the log; raises with the output's tail when it fails."""
        with self.log.open("a") as log:
            log.write(f"\n===== {name}: {' '.join(map(str, cmd))} (cwd {cwd or os.getcwd()})\n")
        # its own process group, so that a timeout also ends what it started (loader workers, augment's pool)
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[gpu_check] killed after {timeout:.0f} s"
            rc = "timeout"
        with self.log.open("a") as log:
            log.write(output)
        if rc != 0:
            raise StepError(f"exit {rc}: {last_error(output)}", output)
        return output

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2))
        (self.out / "gpu_check.md").write_text(summary(self.results))


class StepError(RuntimeError):
    """A step's subprocess failed; ``output`` is what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def last_error(output: str) -> str:
    """The line that says what went wrong: a CLI's ``error:`` line, else the exception line of a traceback, else
    the last line printed."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line.lower() or line.startswith("[gpu_check] killed"):
            return line
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return line
    return lines[-1] if lines else "(no output)"


# --- steps ----------------------------------------------------------------------------------------------------


def environment(record: dict[str, Any], budget: float, check: Check, install: Path | None) -> None:
    if install is not None and install.is_file():  # what bench/gpu_check.sh did before Python started
        record["install"] = json.loads(install.read_text())
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    record["versions"] = versions
    record["python_version"] = platform.python_version()
    check.run("imports", [sys.executable, "-c", IMPORTS], budget)
    if record.get("install", {}).get("failed"):
        raise RuntimeError(f"installing: {record['install']['failed']}")


def device(record: dict[str, Any], budget: float, check: Check) -> None:
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
        line = check.run("nvidia-smi", [smi, query, "--format=csv,noheader"], 30).strip().splitlines()
        record["nvidia_smi"] = line
    else:
        record["nvidia_smi"] = None
    output = check.run("torch", [sys.executable, REPO / "bench" / "gpu_throughput.py", "--info"], budget)
    info = json.loads(output.strip().splitlines()[-1])  # the last line (warnings may come before it)
    record["torch"] = info
    check.results["device"] = {
        "nvidia_smi": record["nvidia_smi"][0] if record["nvidia_smi"] else None,
        "torch_device": info.get("device_name", "cpu (no CUDA)"),
        "torch": info["torch"],
        "cuda": info["torch_cuda"],
    }
    if check.mode == "device" and not info["cuda_available"]:
        raise RuntimeError("torch sees no CUDA device")


def throughput(record: dict[str, Any], budget: float, check: Check, size: int, npz: Path) -> None:
    t = MODES[check.mode]["throughput"]
    target = check.work / f"throughput_{size}.json"
    cmd = [sys.executable, REPO / "bench" / "gpu_throughput.py", "--npz", npz, "--size", size]
    cmd += ["--device", "cuda" if check.mode == "device" else "cpu", "--batch-size", t["batch_size"]]
    cmd += ["--steps", t["steps"], "--warmup", t["warmup"], "--compile-backend", t["compile_backend"], "--json", target]
    if t["limit"]:
        cmd += ["--limit", t["limit"]]
    try:
        check.run(f"throughput {size} px", cmd, budget)
    finally:  # a killed run keeps the variants it finished
        if target.is_file():
            record["result"] = json.loads(target.read_text())
    failed = [v for v, r in record.get("result", {}).get("variants", {}).items() if "error" in r]
    if failed:
        raise RuntimeError(f"variants failed: {', '.join(failed)}")


def write_params(project: Path, mode: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """The repo's params.yaml with this mode's overrides, written to ``project``, loaded by the project's loader."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    applied, missing = {}, []
    overrides = dict(MODES[mode]["overrides"])
    for key, value in (data or {}).items():
        overrides[("data", *key.split("."))] = value
    for path, value in overrides.items():
        node = params
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[path[-1]] = value
            applied[".".join(path)] = value
        else:
            missing.append(".".join(path))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from medmnist_pipeline.config.params import check_trials_can_run, load_params

    # a bad override fails here, named by key, before any stage runs (the tune stage's own checks too)
    check_trials_can_run(load_params(project / "params.yaml"))
    return {"applied": applied, "missing": missing}


def stage(record: dict[str, Any], budget: float, check: Check, name: str, project: Path, env: dict[str, str]) -> None:
    cli = shutil.which("medmnist-pipeline", path=env.get("PATH"))
    cmd = [cli] if cli else [sys.executable, "-m", "medmnist_pipeline"]
    record["command"] = " ".join([Path(cmd[0]).name, *cmd[1:], name, "--params", "params.yaml"])
    check.run(name, [*cmd, name, "--params", "params.yaml"], budget, cwd=project, env=env)
    report = {"download": "reports/data/summary.json", "augment": "data/augmented/meta.json"}.get(
        name, f"reports/{name}/metrics.json"
    )
    if (project / report).is_file():
        metrics = json.loads((project / report).read_text())
        record["metrics"] = metrics
        record["key"] = key_figure(name, metrics)
    if name == "download" and not (project / "data" / "prepared").is_dir():
        raise RuntimeError("no data/prepared after the download stage")
    if name in ("baseline", "train", "tune") and "key" not in record:
        raise RuntimeError(f"no {report} after the stage")


def mlflow_runs(project: Path) -> list[str] | str:
    """The runs the stages left in the project's sqlite store: ``name: status``."""
    try:
        with contextlib.closing(sqlite3.connect(project / "mlflow.db")) as db:
            rows = db.execute("SELECT name, status FROM runs ORDER BY start_time").fetchall()
        return [f"{name}: {status}" for name, status in rows]
    except sqlite3.Error as exc:
        return f"not read: {exc}"


def key_figure(name: str, metrics: dict[str, Any]) -> str:
    if name == "download":
        return ", ".join(f"{split} {v.get('count')}" for split, v in metrics.items() if isinstance(v, dict))
    if name == "augment":
        return ", ".join(f"{k} {v}" for k, v in metrics.items())
    if name == "tune":
        best, trials = metrics.get("best", {}), metrics.get("trials", {})
        value = next((v for k, v in best.items() if k != "trial"), None)
        return f"best {value:.4f} (trial {best.get('trial')}), trials {trials}, {metrics.get('stage_seconds')} s"
    auc = metrics.get("val", {}).get("auc", float("nan"))
    return f"val AUC {auc:.4f}, {metrics.get('epochs')} epochs, {metrics.get('train_seconds')} s"


# --- data for the dry mode without ../shared -------------------------------------------------------------------


def synthetic_npz(folder: Path) -> Path:
    """A small npz in the MedMNIST layout (binary, 28 px) with a learnable signal, for ``data.flag: custom``."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 256), ("val", 64), ("test", 64)):
        labels = rng.integers(0, 2, (n, 1)).astype(np.uint8)
        images = np.clip(60 + 120 * labels[:, :, None] + rng.normal(0, 30, (n, 28, 28)), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    path = folder / "synthetic.npz"
    np.savez_compressed(path, **arrays)
    return path


# --- the results as a short markdown table ---------------------------------------------------------------------


def summary(results: dict[str, Any]) -> str:
    dev = results.get("device", {})
    lines = [
        f"# GPU check ({results['mode']} mode), {results['started']}",
        "",
        f"- device: nvidia-smi `{dev.get('nvidia_smi')}`; torch `{dev.get('torch_device')}`; "
        f"torch {dev.get('torch')}, CUDA {dev.get('cuda')}",
        f"- total {results.get('elapsed_s')} s (deadline {results['deadline_s']} s)",
    ]
    runs = results.get("mlflow_runs")
    if runs is not None:
        listed = f"{len(runs)} ({', '.join(runs)})" if isinstance(runs, list) else runs
        lines.append(f"- MLflow runs in the stages' sqlite store: {listed}")
    if results["mode"] == "dry":
        lines.append("- dry mode: CPU, tiny sizes; the figures test the plumbing, they measure nothing")
    lines += ["", "| step | status | wall (s) | key figure or error |", "|---|---|---|---|"]
    for s in results["steps"]:
        figure = s.get("key") or s.get("error") or ""
        if s["name"].startswith("throughput") and "result" in s:
            v = s["result"]["variants"]
            figure = "; ".join(f"{k} " + (f"{r['speedup']}x" if "speedup" in r else "failed") for k, r in v.items()) + (
                f" (error: {s['error']})" if "error" in s else ""
            )
        figure = " ".join(str(figure).replace("|", "/").split())[:300]
        lines.append(f"| {s['name']} | {s['status']} | {s.get('wall_s', '')} | {figure} |")
    tables = [s for s in results["steps"] if s["name"].startswith("throughput") and "result" in s]
    if tables:
        lines += [
            "",
            "Throughput (ResNet-18, CIFAR stem; images/s over the timed steps; speedup vs the official feeding):",
            "",
            "| size | variant | images/s | speedup | ms/step | first step (s) | peak MiB | loss finite |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in tables:
            r = s["result"]
            for name, v in r["variants"].items():
                if "error" in v:
                    lines.append(f"| {r['size']} | {name} | error: {v['error'][:120]} | | | | | |")
                    continue
                lines.append(
                    f"| {r['size']} | {name} | {v['images_per_s']} | {v.get('speedup', '')} | {v['ms_per_step']} | "
                    f"{v['first_step_s']} | {v.get('peak_mib', '')} | {v['loss_finite']} |"
                )
            feed = r.get("feed", {})
            if "ours_images_per_s" in feed:
                lines.append(
                    f"| {r['size']} | feeding alone | reference {feed['reference_images_per_s']:,}, "
                    f"ours {feed['ours_images_per_s']:,} | | | | | |"
                )
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mirror", type=Path, help="folder with pneumoniamnist.npz (default: MEDMNIST_MIRROR)")
    parser.add_argument("--install-status", type=Path, help="JSON the shell wrote about installing the wheels")
    parser.add_argument("--deadline-s", type=float, help="overall time for all steps (default: per mode)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder the stages ran in")
    parser.add_argument("--only", help="comma-separated steps to run, e.g. train,tune (a rerun of what failed)")
    args = parser.parse_args()
    mode = MODES[args.mode]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").write_text("")
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    check = Check(args.out, args.mode, args.deadline_s or mode["deadline_s"], work)
    caps = mode["caps"]
    mirror = args.mirror or Path(os.environ.get("MEDMNIST_MIRROR") or REPO.parent / "shared" / "data" / "medmnist")
    data: dict[str, Any] | None = None
    npz = mirror / "pneumoniamnist.npz"
    if not npz.is_file():
        if args.mode == "device":
            print(f"[gpu_check] {npz} is missing: run bench/gpu_check.sh --prepare first", flush=True)
        else:  # dry mode without ../shared: a synthetic custom dataset
            npz = synthetic_npz(work)
            data = {"flag": "custom", "custom.path": str(npz), "custom.task": "binary-class"}
            data["custom.labels"] = ["a", "b"]
    check.results["data"] = str(npz)

    sizes = mode["sizes"]
    sized = [f"throughput_{size}px" for size in sizes]
    chosen = set(args.only.split(",")) if args.only else {*sized, *STAGES}
    unknown = chosen - {*sized, *STAGES}
    if unknown:
        parser.error(f"--only: unknown step(s) {', '.join(sorted(unknown))} (steps: {', '.join([*sized, *STAGES])})")
    if chosen & {"baseline", "train", "tune"}:  # what they read: the prepared and the augmented data
        chosen |= {"download", "augment"}

    check.step("environment", 120, environment, check, args.install_status)
    check.step("device", 120, device, check)
    if sized[0] in chosen:
        check.step(sized[0], caps["throughput"], throughput, check, sizes[0], npz)

    project = work / "project"
    project.mkdir()
    env = dict(os.environ, MEDMNIST_MIRROR=str(mirror), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)  # the project folder's own sqlite store (tracking.uri: null)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    def params_step(record: dict[str, Any], budget: float) -> None:
        record.update(write_params(project, args.mode, data))
        if record["missing"]:
            raise RuntimeError(f"params keys not found (schema changed?): {', '.join(record['missing'])}")

    if chosen & set(STAGES):
        params = check.step("params", 60, params_step)
        check.results["project"] = str(project)
        for name in (n for n in STAGES if n in chosen):
            no_params = params["status"] == "failed" and not (project / "params.yaml").is_file()
            check.step(name, caps[name], stage, check, name, project, env, skip="no params file" if no_params else None)
        check.results["mlflow_runs"] = mlflow_runs(project)
    if sized[1] in chosen:
        check.step(sized[1], caps["throughput"], throughput, check, sizes[1], npz)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        check.results["project"] = f"{check.results.get('project', work)} (removed; --keep keeps it)"
    check.save()
    failed = [s["name"] for s in check.results["steps"] if s["status"] != "done"]
    print(summary(check.results), flush=True)
    print(f"[gpu_check] results: {args.out / 'gpu_check.json'}; not done: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
