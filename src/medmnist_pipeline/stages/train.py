"""train: the CNN of ``train.model`` on the augmented training data, selected on validation AUC."""

from medmnist_pipeline.config import load_params
from medmnist_pipeline.fitting import train_stage
from medmnist_pipeline.paths import MODELS_DIR, REPORTS_DIR


def main(params_path: str) -> None:
    params = load_params(params_path)
    train_stage("train", params, params.train, MODELS_DIR / "cnn.ckpt", REPORTS_DIR / "train")
