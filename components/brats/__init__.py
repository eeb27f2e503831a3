"""BraTS release layouts: discovery, per-case validation and canonicalisation.

Canonical form (docs/design.md §2-3): ``cases/<case_id>/<case_id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` in the
``brats2023`` or ``brats2024_post`` label scheme, every file with its source affine and spacing.
Bytes are linked or copied when nothing needs converting; only label remapping (BraTS 2021 ET 4->3,
MSD) and the split of MSD's 4-D images re-encode data.

One job per module: ``common`` (the error, the config, a discovered case), ``discover`` (finding the
cases), ``validate`` (checks of a file and a case), ``canonicalise`` (one case written or
quarantined) and ``ingest`` (a whole release into a catalogued dataset).
"""

from components.brats.canonicalise import CasePlan, ingest_case, quarantine_case
from components.brats.common import (
           AFFINE_TOL_MM,
           FILE_KEYS,
           CaseProblem,
           CaseSource,
           IngestConfig,
           IngestError,
           SourceChoices,
)
from components.brats.discover import discover
from components.brats.ingest import IngestSummary, candidate_schemes, ingest, source_fingerprint

__all__ = ["AFFINE_TOL_MM", "FILE_KEYS", "CaseProblem", "CaseSource", "IngestConfig", "IngestError", "IngestSummary",
           "CasePlan", "candidate_schemes", "discover", "ingest", "ingest_case", "quarantine_case",
           "SourceChoices", "source_fingerprint"]
