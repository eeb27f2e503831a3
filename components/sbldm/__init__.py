"""The ``sbldm`` synthesizer: slice-based latent diffusion that generates an MRI volume AND its tumour mask,
conditioned on tumour shape features (after Kebaili et al., ISBI 2024). docs/sbldm.md describes it.

- ``config``: typed settings and the YAML profiles of ``configs/sbldm/`` (no torch).
- ``vae``: the 2-D slice VAE (four modalities + the one-hot mask in, image + mask logits out) with a
  FiLM slice-position embedding in every encoder and decoder block.
- ``diffusion``: MONAI's 3-D ``DiffusionModelUNet`` over the stacked slice latents, with the feature
  embedding added to the time embedding and applied as scale-shift normalisation; DDIM with guidance.
- ``features``: the conditioning features (``components.masks.features.mask_features``), their stored
  normalisation, and the controllability errors of a synthetic dataset.
- ``training`` / ``sampling``: the two stages, and the synthetic dataset with its mask checks.
"""
