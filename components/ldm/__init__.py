"""The ``ldm`` synthesizer: a 3-D latent diffusion model on MONAI parts (the recipe of MONAI's model-zoo
bundle ``brats_mri_generative_diffusion``), for all four modalities and conditioned on the tumour mask.

Two stages: an ``AutoencoderKL`` (L1 + KL + least-squares patch adversarial loss, + a 2.5-D perceptual
loss when a local ResNet-50 state dict is given) compresses the normalised head 4x per axis; a
``DiffusionModelUNet`` then learns the scaled latents (z * scale_factor, scale_factor = 1 / std of the
training latents, stored with the model) with the one-hot mask averaged onto the latent grid
concatenated to its input. Modules: ``config`` (settings, profiles in ``configs/ldm/``), ``networks``,
``store`` (the model folder), ``training``, ``sampling`` (the seeded sampler and the synthetic dataset
writer), ``evaluate`` (the tumour contrast check). docs/ldm.md explains the choices.
"""
