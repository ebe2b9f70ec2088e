"""``medmnist-pipeline predict``: class probabilities for new images, as CSV.

The model is a file written by a stage (``models/tuned.ckpt``, ...) or an MLflow model URI (``runs:/<id>/model``,
``models:/<name>@<alias>``): model.py. Images are PNG/JPEG files, folders of them, or npz arrays: inputs.py. The
command itself, with the CSV it writes: run.py.

May import: the shared base, config, models and tracking (lazily: a light command).
"""
