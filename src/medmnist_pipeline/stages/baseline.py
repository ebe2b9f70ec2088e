"""baseline: multinomial logistic regression (params: baseline), selected on validation AUC."""

from medmnist_pipeline.config import load_params
from medmnist_pipeline.fitting import train_stage
from medmnist_pipeline.paths import MODELS_DIR, REPORTS_DIR


def main(params_path: str) -> None:
    params = load_params(params_path)
    train_stage("baseline", params, params.baseline, MODELS_DIR / "baseline.ckpt", REPORTS_DIR / "baseline")
