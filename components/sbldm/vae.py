"""The 2-D slice VAE of sbldm: an axial slice of the four modalities plus the one-hot mask in, its image
and mask logits out, with the slice's position fed to every block.

MONAI's ``AutoencoderKL`` (spatial_dims=2) has no input for an embedding, so the encoder and decoder are
assembled here from MONAI's ``Convolution`` blocks with a FiLM residual block: the normalised slice index
(k / (Z - 1)) is embedded (MONAI's sinusoidal embedding, then an MLP) and every block scales and shifts its
normalised features per channel by a linear map of that embedding.

Encoding uses the posterior mean. The latent scale (1 / std of the training latents) is a buffer of the
module, so it is saved and loaded with the weights: ``encode_volume`` multiplies by it and
``decode_volume`` divides by it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from components.sbldm.config import VaeConfig


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> Convolution:
    return Convolution(spatial_dims=2, in_channels=cin, out_channels=cout, strides=stride, kernel_size=kernel,
                       padding=kernel // 2, conv_only=True)


class PositionEmbedding(nn.Module):
    """Normalised slice position in [0, 1] (B,) -> embedding (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        return self.mlp(get_timestep_embedding(position.float() * 1000.0, self.dim))


class FiLMResBlock(nn.Module):
    """GroupNorm-SiLU-conv, GroupNorm then FiLM (h * (1 + scale) + shift from the position embedding), SiLU-conv, + skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = _conv(cin, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.conv2 = _conv(cout, cout)
        self.skip = nn.Identity() if cin == cout else _conv(cin, cout, kernel=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class SliceVAE(nn.Module):
    def __init__(self, cfg: VaeConfig, image_channels: int, mask_classes: int):
        super().__init__()
        self.cfg = cfg
        self.image_channels = image_channels
        self.mask_classes = mask_classes
        ch, g, e = cfg.channels, cfg.norm_num_groups, cfg.position_dim
        self.position = PositionEmbedding(e)
        self.register_buffer("scale_factor", torch.tensor(1.0))
        # encoder
        self.enc_in = _conv(image_channels + mask_classes, ch[0])
        self.enc_blocks = nn.ModuleList()
        self.enc_down = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(FiLMResBlock(prev, c, e, g))
                prev = c
            self.enc_blocks.append(blocks)
            self.enc_down.append(_conv(c, c, stride=2) if i < len(ch) - 1 else nn.Identity())
        self.enc_norm = nn.GroupNorm(g, prev, eps=1e-6)
        self.enc_out = _conv(prev, 2 * cfg.latent_channels)
        # decoder
        self.dec_in = _conv(cfg.latent_channels, ch[-1])
        self.dec_blocks = nn.ModuleList()
        self.dec_up = nn.ModuleList()
        prev = ch[-1]
        for i, c in enumerate(reversed(ch)):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(FiLMResBlock(prev, c, e, g))
                prev = c
            self.dec_blocks.append(blocks)
            self.dec_up.append(_conv(c, c) if i < len(ch) - 1 else nn.Identity())
        self.dec_norm = nn.GroupNorm(g, prev, eps=1e-6)
        self.dec_out = _conv(prev, image_channels + mask_classes)

    # ----------------------------------------------------------------- slices
    def encode(self, x: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, image + mask channels, X, Y), positions (N,) -> posterior (mean, sigma), each (N, L, X/f, Y/f)."""
        emb = self.position(position)
        h = self.enc_in(x)
        for blocks, down in zip(self.enc_blocks, self.enc_down, strict=True):
            for b in blocks:
                h = b(h, emb)
            h = down(h)
        mu, logvar = self.enc_out(F.silu(self.enc_norm(h))).chunk(2, dim=1)
        return mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled latents (N, L, x, y), positions (N,) -> (image (N, C, X, Y), mask logits (N, K, X, Y))."""
        emb = self.position(position)
        h = self.dec_in(z)
        for blocks, up in zip(self.dec_blocks, self.dec_up, strict=True):
            for b in blocks:
                h = b(h, emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.dec_out(F.silu(self.dec_norm(h)))
        return out[:, : self.image_channels], out[:, self.image_channels:]

    # ----------------------------------------------------------------- volumes
    @staticmethod
    def positions(n_slices: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Normalised index k / (Z - 1) of each axial slice."""
        return torch.arange(n_slices, device=device, dtype=torch.float32) / max(n_slices - 1, 1)

    def encode_volume(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> scaled posterior means stacked along the slice axis (B, L, X/f, Y/f, Z)."""
        b, c, X, Y, Z = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * Z, c, X, Y)
        mu, _ = self.encode(slices, self.positions(Z, x.device).repeat(b))
        return (mu * self.scale_factor).reshape(b, Z, *mu.shape[1:]).permute(0, 2, 3, 4, 1)

    def decode_volume(self, z: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents (B, L, x, y, Z) -> (image (B, C, X, Y, Z), mask logits (B, K, X, Y, Z)), slice by slice."""
        b, L, x, y, Z = z.shape
        slices = z.permute(0, 4, 1, 2, 3).reshape(b * Z, L, x, y) / self.scale_factor
        pos = self.positions(Z, z.device).repeat(b)
        imgs, logits = [], []
        for s in range(0, b * Z, chunk):
            i, m = self.decode(slices[s:s + chunk], pos[s:s + chunk])
            imgs.append(i)
            logits.append(m)
        img, lg = torch.cat(imgs), torch.cat(logits)

        def back(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, Z, *t.shape[1:]).permute(0, 2, 3, 4, 1)

        return back(img), back(lg)


def build_vae(cfg: VaeConfig, mask_classes: int, image_channels: int = 4) -> SliceVAE:
    return SliceVAE(cfg, image_channels, mask_classes)


def film_layers(vae: SliceVAE) -> list[nn.Linear]:
    """Every FiLM projection of the encoder and decoder (what carries the slice position)."""
    return [m.film for m in vae.modules() if isinstance(m, FiLMResBlock)]
