"""Label-map latent diffusion: new tumour masks (mask source ``ldm``) and a ControlNet segmenter (``ldmseg``).

After LDM-seg (Liu et al., ISBI 2025): an autoencoder and a latent diffusion model are trained on label
maps only (one-hot background, head and tumour labels; MONAI ``AutoencoderKL`` with a Dice + cross-entropy
loss, an unconditional ``DiffusionModelUNet`` on its scaled latents). Sampling it gives new masks; a
MONAI ``ControlNet`` on the frozen diffusion model, conditioned on the four MRIs, turns it into a
segmenter whose repeated samples give a per-voxel variance map.

Modules: ``config`` (settings, profiles in ``configs/labelldm/``), ``networks``, ``data`` (cases on the
model grid and back), ``store`` (the model folder), ``training``, ``sampling``, ``masks`` (the masks
dataset of mask source ``ldm``), ``realism`` (how close generated masks are to held-out real ones).
docs/ldmseg.md explains the choices.
"""
