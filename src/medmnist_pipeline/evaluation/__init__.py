"""Evaluation, the only package that reads the test split: scoring with bootstrap intervals (scoring.py), retrains
for seeds and the size curve (retrains.py), paired comparisons (comparison.py), robustness under MedMNIST-C
(robustness.py), error analysis (analysis.py), calibration (calibration.py), learning curves (curves.py) and the
report (report.py).

May import: the shared base, transforms, config, data, models, tracking, training, tuning.
"""
