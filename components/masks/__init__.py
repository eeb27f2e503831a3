"""Head label, mask augmentation and tumour features (issue 4). No Prefect here."""

from components.masks.head import derive_head_mask

__all__ = ["derive_head_mask"]
