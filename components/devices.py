"""The one device resolver: every stage asks it which torch device to use."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from components.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_device(name: str, stage: str = "gliosynth") -> torch.device:
    """``auto`` -> the first visible CUDA GPU, else the CPU with a warning that says so; ``cuda`` or
    ``cuda:N`` without a visible GPU is refused (InputError); ``cpu`` is the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("%s device 'auto': no CUDA GPU is visible (torch %s, CUDA build %s), running on the CPU",
                    stage, torch.__version__, torch.version.cuda)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{stage} device {name!r}: no CUDA GPU is visible (torch {torch.__version__}, CUDA build "
                         f"{torch.version.cuda}); use device auto or cpu")
    return torch.device(name)
