"""Conditional diffusion synthesizer (docs/design.md §4): mask-conditioned 3-D DDPM on MONAI parts.

- ``config``: typed settings and YAML profiles (``configs/synthesizer/``)
- ``data``: head masks, conditioning maps, grid fitting (MONAI), intensity normalisation, training set
- ``network``: ``DiffusionModelUNet`` and scheduler factories
- ``training``: training loop with EMA, accumulation, checkpoints and exact resume
- ``sampling``: DDIM (default) and the full-length DDPM reference
- ``quality``: tissue-statistics quality score
- ``store``: the model folder; ``writer``: the synthetic dataset

Import the submodules directly; this package file stays light so the command line starts fast.
"""
