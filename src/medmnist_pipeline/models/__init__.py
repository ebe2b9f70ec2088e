"""Models: the architectures (networks.py), ImageNet-pretrained backbones (pretrained.py), pixel and score
conventions shared by training and inference (conventions.py), the one ``build_model`` (build.py) and the saved
model file (modelfile.py).

May import: the shared base and config. Needs torch, never Lightning or MLflow (``predict`` imports it cheaply).
"""
