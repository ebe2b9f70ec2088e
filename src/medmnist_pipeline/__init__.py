"""medmnist-pipeline: a declarative, reproducible MedMNIST classification pipeline."""

__version__ = "0.1.0"
