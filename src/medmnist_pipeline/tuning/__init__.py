"""Tuning: the Optuna search over ``tune.space`` (search.py), several workers on one study (workers.py), what the
tune stage writes about a finished search (study_report.py) and the statistics of validation noise (statistics.py).

May import: the shared base, config, data, models, tracking, training.
"""
