"""Segmentation models trained on real+synthetic mixes: nnU-Net v2 through its Python API."""
