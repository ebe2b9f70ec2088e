"""Training: the LightningModule (classifier.py), its callbacks, the best-epoch rule (selection.py), the Trainer
from ``train.trainer`` (trainer.py) and ``fit``, the one training run every stage, trial and retrain calls (fit.py).

May import: the shared base, config, data, models, tracking.
"""
