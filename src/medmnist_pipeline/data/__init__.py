"""Data: fetch and prepare the MedMNIST file (dataset.py), and read its splits in bounded memory: batch sources held
in RAM or memory-mapped (batches.py) and the Lightning DataModule of the training and validation splits
(datamodule.py). The test split is read through ``dataset.load_splits`` by evaluation only.

May import: the shared base, transforms, config.
"""
