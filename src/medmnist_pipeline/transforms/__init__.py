"""Image transforms on uint8 arrays: the albumentations pipeline of ``augment`` (augmentation.py) and the MedMNIST-C
corruptions (corruptions.py, with their registry in corruption_sets.py).

May import: the shared base (errors, files, figures, metadata). Imported by config (to check transform names and
corruption names on load), data, evaluation and the stages.
"""
