#!/usr/bin/env bash
# The GPU check in one call (bench/README.md, "GPU check"). Three modes, run from anywhere:
#
#   bash bench/gpu_check.sh --prepare   here, with network: the wheels the GPU machine lacks into .whl/ (cp312,
#                                       manylinux x86-64, versions from constraints.txt) and PneumoniaMNIST into
#                                       .gpu_data/; prints what `carry` will send
#   bash bench/gpu_check.sh             on the GPU machine: install the wheels and the project into $SITE, then
#                                       bench/gpu_check.py --mode device; results in $OUT (else .gpu_check_out/)
#   bash bench/gpu_check.sh --dry [--out DIR] [--only STEPS]
#                                       here, on the CPU, with the active environment (no wheels): the same steps
#                                       at tiny sizes; results in DIR (default .gpu_check_out/dry)
#
# --only train,tune (any mode but --prepare) runs only those steps (with the stages they read): a rerun of what failed.
# Exit status: 0 when every step is done, 1 when one is not (each step's error is in gpu_check.json).
set -u
CALLER=$PWD
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
WHEELS=.whl
SITE=${GPU_CHECK_SITE:-/tmp/site}  # where the wheels and the project are installed on the GPU machine
DATA=.gpu_data
SHARED=${MEDMNIST_TEST_DATA:-$ROOT/../shared/data/medmnist}

# What the GPU machine lacks (its package list: /work/.library/device/KINDS.md), each with its Requires-Dist
# checked: pydantic; optuna and its SQL store; albumentations (params validation imports it, also with no
# transforms); mlflow-skinny (the SQL tracking store needs cryptography, alembic, SQLAlchemy) and what it imports.
# opencv-python-headless, numpy, scipy, torch, lightning, pandas, matplotlib, scikit-learn, rich, PyYAML, tqdm,
# click, cloudpickle, requests, protobuf, anyio, h11, MarkupSafe, zipp, annotated-doc are there already.
NAMES=(
  pydantic pydantic_core annotated-types typing-inspection typing_extensions
  optuna optuna-integration alembic SQLAlchemy Mako colorlog
  albumentations albucore stringzilla simsimd
  mlflow-skinny cachetools databricks-sdk google-auth pyasn1 pyasn1_modules cryptography cffi pycparser
  fastapi starlette uvicorn GitPython gitdb smmap importlib_metadata python-dotenv sqlparse
  opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
)

prepare() {
  local pins=() name pin
  for name in "${NAMES[@]}"; do
    # the lock's spelling may differ in case and in - / _ / .
    pin=$(grep -iE "^$(echo "$name" | sed 's/[-_.]/[-_.]/g')==" constraints.txt | head -1)
    [ -n "$pin" ] || { echo "gpu_check --prepare: $name is not in constraints.txt" >&2; return 1; }
    pins+=("$pin")
  done
  rm -rf "$WHEELS" && mkdir -p "$WHEELS" "$DATA" || return 1
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WHEELS" "${pins[@]}" || return 1
  [ -f "$SHARED/pneumoniamnist.npz" ] || { echo "gpu_check --prepare: no $SHARED/pneumoniamnist.npz" >&2; return 1; }
  cp "$SHARED/pneumoniamnist.npz" "$DATA/" || return 1
  echo "wheels: $(ls "$WHEELS" | wc -l) files, $(du -sm "$WHEELS" | cut -f1) MiB; data: $(du -sm "$DATA" | cut -f1) MiB"
  # What travels: tracked and untracked-not-ignored files, plus the carried folders.
  local tree carried
  tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -sb "$WHEELS" "$DATA" | awk '{s += $1} END {print s}')
  awk -v t="$tree" -v c="$carried" 'BEGIN {printf "travels: tree %.1f MiB + carried %.1f MiB = %.1f MiB (limit 64)\n",
    t / 1048576, c / 1048576, (t + c) / 1048576}'
}

install() {
  # Wheels and the project into $SITE (the machine's own packages stay as they are); the outcome as JSON for
  # gpu_check.py's environment step.
  local status=$1 started=$SECONDS failed="" how=installed src=/tmp/gpu_check_src
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE \
    "$WHEELS"/*.whl || failed="the wheels in $WHEELS"
  # the project from a copy of its sources (pip builds in the tree it is given); requires-python says <3.12,
  # the machine has 3.12: --ignore-requires-python, and this check is what tries 3.12
  rm -rf "$src" && mkdir -p "$src" && cp -r pyproject.toml README.md src "$src"/
  if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --ignore-requires-python --no-compile \
    --no-cache-dir --upgrade --target $SITE "$src"; then
    how="not installed: src/ on PYTHONPATH, the CLI as python -m medmnist_pipeline"
    export PYTHONPATH=$ROOT/src
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PATH=$SITE/bin:$PATH
  "$PY" - "$status" "$((SECONDS - started))" "$how" "$failed" <<'EOF'
import json, sys
path, seconds, how, failed = sys.argv[1:]
json.dump({"seconds": int(seconds), "project": how, "failed": failed or None}, open(path, "w"))
EOF
}

MODE=device
ONLY=()
OUT_DIR=
while [ $# -gt 0 ]; do
  case $1 in
    --prepare) MODE=prepare ;;
    --dry) MODE=dry ;;
    --out) shift; case $1 in /*) OUT_DIR=$1 ;; *) OUT_DIR=$CALLER/$1 ;; esac ;;
    --only) shift; ONLY=(--only "$1") ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (--prepare, --dry, --out DIR, --only STEPS)" >&2; exit 2 ;;
  esac
  shift
done

[ -n "$OUT_DIR" ] || if [ "$MODE" = dry ]; then OUT_DIR=$ROOT/.gpu_check_out/dry; else OUT_DIR=${OUT:-$ROOT/.gpu_check_out}; fi
export NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
case $MODE in
  prepare) prepare ;;
  dry)
    mkdir -p "$OUT_DIR"
    MIRROR=$SHARED; [ -f "$MIRROR/pneumoniamnist.npz" ] || MIRROR=""
    exec "$PY" bench/gpu_check.py --mode dry --out "$OUT_DIR" ${MIRROR:+--mirror "$MIRROR"} "${ONLY[@]}" ;;
  device)
    mkdir -p "$OUT_DIR"
    status=/tmp/gpu_check_install.json
    install "$status"
    export MEDMNIST_MIRROR=$ROOT/$DATA
    exec "$PY" bench/gpu_check.py --mode device --out "$OUT_DIR" --mirror "$ROOT/$DATA" --install-status "$status" "${ONLY[@]}" ;;
esac
