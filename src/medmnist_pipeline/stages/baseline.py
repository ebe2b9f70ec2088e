"""baseline: multinomial logistic regression (params: baseline), selected on validation AUC."""

from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.stages import train


def main(params_path: str) -> None:
    params = load_params(params_path)
    train.run("baseline", params, params.baseline)
