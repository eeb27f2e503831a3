"""Head label, mask augmentation and tumour features. No Prefect here.

- ``derive_head_mask``: head/brain label from the four modalities together (head.py).
- ``sample_mask_params`` / ``apply_mask_params``: draw augmentation parameters from a seeded
  generator, then apply them deterministically (augment.py); params are a ``MaskParams`` model
  (params.py), stored per mask as JSON.
- ``check_mask`` / ``mask_reference``: plausibility checks, each failure named (checks.py).
- ``mask_features``: tumour features in mm per region (features.py).
- ``augment_masks``: the masks dataset (dataset.py); ``mask_figures``: its PNGs (plots.py).
"""

from components.masks.augment import MaskCase, apply_mask_params, lr_axis_from_affine, sample_mask_params
from components.masks.checks import CHECK_REASONS, MaskReference, check_mask, mask_reference, nested_pairs
from components.masks.config import (
    AffineConfig,
    CheckConfig,
    ElasticConfig,
    FlipConfig,
    MaskAugmentConfig,
    RelocateConfig,
    TumourScaleConfig,
)
from components.masks.dataset import SOURCE_FEATURES, AugmentSummary, augment_masks, mask_id, mask_seed
from components.masks.features import feature_columns, mask_features
from components.masks.head import derive_head_mask
from components.masks.params import MaskParams
from components.masks.plots import mask_figures, mask_montage, plot_mask_features

__all__ = [
    "AffineConfig", "AugmentSummary", "CHECK_REASONS", "CheckConfig", "ElasticConfig", "FlipConfig", "MaskAugmentConfig",
    "MaskCase", "MaskParams", "MaskReference", "RelocateConfig", "SOURCE_FEATURES", "TumourScaleConfig", "apply_mask_params",
    "augment_masks", "check_mask", "derive_head_mask", "feature_columns", "lr_axis_from_affine", "mask_features",
    "mask_figures", "mask_id", "mask_montage", "mask_reference", "mask_seed", "nested_pairs", "plot_mask_features",
    "sample_mask_params",
]
