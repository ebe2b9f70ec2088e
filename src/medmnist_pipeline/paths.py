"""Where stages read and write, relative to the project root (DVC runs every stage there).

dvc.yaml declares the same paths as deps and outs; keep the two in step.
"""

from pathlib import Path

RAW_DIR = Path("data/raw")  # the verified official .npz (persists across runs: no second download)
PREPARED_DIR = Path("data/prepared")  # {split}_images.npy, {split}_labels.npy, meta.json
AUGMENTED_DIR = Path("data/augmented")  # train_images.npy (copies, N, H, W[, C]), meta.json
REPORTS_DIR = Path("reports")
MODELS_DIR = Path("models")
TUNED_PARAMS = Path("reports/tune/best_params.yaml")  # the train params of the best tuning trial
