"""Synthetic labelled cases from one real CT: seeded augmentation + a random mix of procedural lesions.

:func:`synthetic_case` is what ``x2ct build-dataset --synthetic-from CT`` calls once per case. Arrays
are canonical-grid (D, H, W) (axes: :mod:`x2ct.geometry`), the CT float32 HU, the label map integer,
``spacing_mm`` the isotropic voxel edge.

Labels (targets) per case, from the lesion kinds it contains (:data:`KIND_LABELS`; table in
docs/synthetic_lesions.md):

* ``tb_present`` 1 if any TB sign is present. The solid nodule is a non-TB distractor (a
  non-calcified nodule is not attributable to TB on imaging), and pulmonary embolism is not TB.
* ``tb_granuloma``, ``tb_cavitation``, ``tb_calcification``: TB type, multi-label (0/1; 0 without TB).
  A calcified granuloma counts as granuloma and calcification; flecks as calcification; a cavity as
  cavitation. Miliary nodules are microscopic granulomas but not the radiological "granuloma" (a
  discrete, usually calcified nodule), so they set none of the types.
* ``tb_active``: for TB-positive cases 1 when any sign of active disease is present (cavity,
  consolidation, miliary pattern, pleural effusion), 0 when only healed signs are present (sequelae:
  calcified granuloma, calcification flecks); ``None`` (blank in a CSV) for TB-negative cases.
* ``pe_present`` 1 when a pulmonary-embolism filling defect was inserted.

Case mix (:data:`CASE_MIX`, probabilities): normal, distractor (solid nodule only), active TB (1-2
active signs, sometimes with a healed sign), TB sequelae (1-2 healed signs), PE only. TB cases
sometimes also carry a distractor nodule or a PE. Pulmonary vessels are contrast-enhanced in every PE
case and, with probability :data:`CONTRAST_WITHOUT_PE_P`, in the others, so enhancement alone does not
reveal PE.

Order of operations: geometric augmentation (CT and labels together), vessel enhancement / PE, the
other lesions in :data:`INSERTION_ORDER` (each kept off the previous ones), then intensity changes
and noise (so lesions get the same noise as the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage

from .augment import AugmentConfig, adjust_intensity, deform
from .lesions import INSERTERS, enhance_pulmonary_vessels, lung_mask

LESION_KINDS = tuple(INSERTERS)
"""All lesion kinds: solid_nodule, calcified_granuloma, calcification_flecks, cavity, consolidation,
pleural_effusion, miliary, pulmonary_embolism."""

TARGET_NAMES = ("tb_present", "tb_granuloma", "tb_cavitation", "tb_calcification", "tb_active", "pe_present")
"""Per-case labels, in manifest column order."""


@dataclass(frozen=True)
class KindLabels:
    """What one lesion kind says about a case (see module doc)."""

    tb: bool
    granuloma: bool = False
    cavitation: bool = False
    calcification: bool = False
    active: bool = False
    """A sign of active TB; a TB kind that is not active is a healed sign (sequela)."""
    pe: bool = False


KIND_LABELS: Dict[str, KindLabels] = {
    "solid_nodule": KindLabels(tb=False),
    "calcified_granuloma": KindLabels(tb=True, granuloma=True, calcification=True),
    "calcification_flecks": KindLabels(tb=True, calcification=True),
    "cavity": KindLabels(tb=True, cavitation=True, active=True),
    "consolidation": KindLabels(tb=True, active=True),
    "pleural_effusion": KindLabels(tb=True, active=True),
    "miliary": KindLabels(tb=True, active=True),
    "pulmonary_embolism": KindLabels(tb=False, pe=True),
}
"""Lesion kind -> its contribution to the case labels."""

ACTIVE_KINDS = tuple(k for k, v in KIND_LABELS.items() if v.tb and v.active)
SEQUELA_KINDS = tuple(k for k, v in KIND_LABELS.items() if v.tb and not v.active)

CASE_MIX = {"normal": 0.20, "distractor": 0.10, "tb_active": 0.30, "tb_sequelae": 0.20, "pe_only": 0.20}
"""Probability of each case category."""
MIXED_SEQUELA_P = 0.3
"""Probability that an active-TB case also has a healed sign."""
TB_EXTRA_NODULE_P = 0.15
"""Probability that a TB case also has a distractor nodule."""
TB_EXTRA_PE_P = 0.10
"""Probability that a TB case also has a pulmonary embolism."""
CONTRAST_WITHOUT_PE_P = 0.5
"""Probability that a case without PE has contrast-enhanced pulmonary vessels."""

INSERTION_ORDER = (
    "pulmonary_embolism",
    "pleural_effusion",
    "consolidation",
    "cavity",
    "calcified_granuloma",
    "solid_nodule",
    "calcification_flecks",
    "miliary",
)
"""Order in which lesions are painted; each later one is kept off the earlier ones (one voxel apart)."""


@dataclass
class SyntheticCase:
    """One synthetic case on the canonical grid (D, H, W)."""

    ct_hu: np.ndarray
    """CT, float32 HU, augmented and with lesions."""
    labels: np.ndarray
    """Organ label map deformed with the CT (input dtype)."""
    lesion_masks: Dict[str, np.ndarray]
    """Lesion kind -> bool mask of that lesion (only the kinds present)."""
    kinds: List[str]
    """Lesion kinds present, in :data:`LESION_KINDS` order (empty for a normal case)."""
    targets: Dict[str, Optional[int]]
    """Labels, keys :data:`TARGET_NAMES` (see :func:`targets_for`)."""
    contrast: bool
    """True when the pulmonary vessels are contrast-enhanced."""


def targets_for(kinds: Sequence[str]) -> Dict[str, Optional[int]]:
    """Case labels for a set of lesion kinds (:data:`KIND_LABELS`); ``tb_active`` is None without TB."""
    unknown = set(kinds) - set(KIND_LABELS)
    if unknown:
        raise ValueError(f"unknown lesion kinds {sorted(unknown)}; use {', '.join(LESION_KINDS)}")
    labels = [KIND_LABELS[k] for k in kinds]
    tb = any(v.tb for v in labels)
    return {
        "tb_present": int(tb),
        "tb_granuloma": int(any(v.granuloma for v in labels)),
        "tb_cavitation": int(any(v.cavitation for v in labels)),
        "tb_calcification": int(any(v.calcification for v in labels)),
        "tb_active": int(any(v.active for v in labels)) if tb else None,
        "pe_present": int(any(v.pe for v in labels)),
    }


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of case ``index`` of a data set built with ``seed``."""
    return np.random.default_rng([int(seed), int(index)])


def _subset(rng: np.random.Generator, kinds: Sequence[str], most: int) -> List[str]:
    count = int(rng.integers(1, most + 1))
    return [kinds[i] for i in rng.choice(len(kinds), size=count, replace=False)]


def choose_kinds(rng: np.random.Generator) -> List[str]:
    """A random lesion mix following :data:`CASE_MIX`, in :data:`LESION_KINDS` order."""
    category = str(rng.choice(list(CASE_MIX), p=list(CASE_MIX.values())))
    kinds: List[str] = []
    if category == "distractor":
        kinds = ["solid_nodule"]
    elif category == "pe_only":
        kinds = ["pulmonary_embolism"]
    elif category in ("tb_active", "tb_sequelae"):
        if category == "tb_active":
            kinds = _subset(rng, ACTIVE_KINDS, 2)
            if rng.uniform() < MIXED_SEQUELA_P:
                kinds += _subset(rng, SEQUELA_KINDS, 1)
        else:
            kinds = _subset(rng, SEQUELA_KINDS, 2)
        if rng.uniform() < TB_EXTRA_NODULE_P:
            kinds.append("solid_nodule")
        if rng.uniform() < TB_EXTRA_PE_P:
            kinds.append("pulmonary_embolism")
    return [k for k in LESION_KINDS if k in kinds]


def synthetic_case(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    spacing_mm: float,
    seed: int,
    index: int,
    config: Optional[AugmentConfig] = None,
    kinds: Optional[Sequence[str]] = None,
) -> SyntheticCase:
    """Case ``index`` of the synthetic data set ``seed`` built from one canonical CT and its label map.

    ``ct_hu`` (D, H, W) HU and ``labels`` (same shape, lung lobes 10-14 required) are not modified.
    Deterministic: the same (seed, index) and inputs give identical arrays. ``kinds`` overrides the
    random lesion mix (e.g. for figures). Raises :class:`x2ct.data.lesions.LesionError` when a lesion
    cannot be placed (no lung labels, no vessel tree). ``config`` defaults to :class:`AugmentConfig`.
    """
    config = config or AugmentConfig()
    rng = case_rng(seed, index)
    ct, warped = deform(ct_hu, labels, rng, spacing_mm, config)
    chosen = choose_kinds(rng) if kinds is None else [k for k in LESION_KINDS if k in set(kinds)]
    targets = targets_for(chosen)
    contrast = "pulmonary_embolism" in chosen or bool(rng.uniform() < CONTRAST_WITHOUT_PE_P)
    if contrast and "pulmonary_embolism" not in chosen:
        ct, _ = enhance_pulmonary_vessels(ct, warped, rng, spacing_mm)
    masks: Dict[str, np.ndarray] = {}
    taken = np.zeros(ct.shape, dtype=bool)
    lungs = lung_mask(warped)
    for kind in INSERTION_ORDER:
        if kind not in chosen:
            continue
        free = lungs & ~ndimage.binary_dilation(taken) if taken.any() else None
        ct, masks[kind] = INSERTERS[kind](ct, warped, rng, spacing_mm, free=free)
        taken |= masks[kind]
    ct = adjust_intensity(ct, rng, config)
    return SyntheticCase(
        ct_hu=ct,
        labels=warped,
        lesion_masks={k: masks[k] for k in chosen},
        kinds=chosen,
        targets=targets,
        contrast=contrast,
    )
