"""Radiograph view names and how each view's pixels relate to the canonical volume.

The one place that knows view names. Display convention (the official X2CT-GAN one, see
:mod:`x2ct.geometry` for the volume axes):

* Rows of every radiograph run along the volume's D axis: row 0 is superior.
* PA (and AP) columns run along W in radiological display: column 0 is the patient's right.
* LATERAL columns run along H: column 0 is anterior (the patient faces the viewer's left).
"""

from __future__ import annotations

from typing import Optional

PA = "PA"
AP = "AP"
LATERAL = "LATERAL"

VIEWS = (PA, AP, LATERAL)
FRONTAL_VIEWS = (PA, AP)

# Input keys: the names of a model's input images in batches, classifier metadata ("inputs"), Grad-CAM
# file names and the JSON outputs. A radiograph's key is its view's name in lower case; the CT has its own.
PA_KEY = "pa"
LATERAL_KEY = "lateral"
CT_KEY = "ct"
INPUT_KEYS = (PA_KEY, LATERAL_KEY, CT_KEY)
"""Every input key, in the order batches and metadata list them."""
RADIOGRAPH_VIEWS = (PA, LATERAL)
"""The views a model takes (an AP frontal is read as the PA input)."""
_KEY_OF_VIEW = {PA: PA_KEY, AP: PA_KEY, LATERAL: LATERAL_KEY}
_VIEW_OF_KEY = {PA_KEY: PA, LATERAL_KEY: LATERAL}

# DICOM ViewPosition (0018,5101) defined terms -> our view names. Oblique and decubitus views map to None.
_VIEW_POSITION = {"PA": PA, "AP": AP, "LL": LATERAL, "RL": LATERAL, "LATERAL": LATERAL, "LAT": LATERAL}

# SNOMED CT codes of CID 4010 used in ViewCodeSequence.
_VIEW_CODES = {
    "272479007": PA,  # postero-anterior
    "399348003": AP,  # antero-posterior
    "399173006": LATERAL,  # left lateral
    "399198007": LATERAL,  # right lateral
    "399067008": LATERAL,  # lateral
}


def normalize_view(text: Optional[str]) -> Optional[str]:
    """Map a user- or tag-supplied view name (any case; 'pa', 'lat', 'LL', ...) to PA, AP, LATERAL or None."""
    if text is None:
        return None
    key = str(text).strip().upper()
    if not key:
        return None
    return _VIEW_POSITION.get(key)


def view_from_code(code_value: Optional[str]) -> Optional[str]:
    """Map a ViewCodeSequence SNOMED code value to a view name, or None if unknown."""
    return _VIEW_CODES.get(str(code_value).strip()) if code_value else None


def view_from_patient_orientation(row_direction: str, column_direction: str) -> Optional[str]:
    """Infer frontal vs lateral from DICOM PatientOrientation (row and column direction letters).

    Frontal chests have a row direction toward L or R; laterals toward A or P. The column
    direction is normally F (feet). Frontal is returned as PA because a row direction alone
    cannot tell PA from AP; the caller records that the view was inferred.
    """
    row = row_direction.strip().upper()[:1]
    if row in ("L", "R"):
        return PA
    if row in ("A", "P"):
        return LATERAL
    return None


def is_frontal(view: Optional[str]) -> bool:
    """True for PA and AP."""
    return view in FRONTAL_VIEWS


def input_key(view: str) -> str:
    """The input key of a radiograph view: ``"pa"`` for PA (and AP), ``"lateral"`` for LATERAL."""
    try:
        return _KEY_OF_VIEW[view]
    except KeyError:
        raise ValueError(f"no input key for view {view!r}") from None


def view_of_key(key: str) -> str:
    """The view whose radiograph an input key names (``"pa"`` -> PA, ``"lateral"`` -> LATERAL)."""
    try:
        return _VIEW_OF_KEY[key]
    except KeyError:
        raise ValueError(f"input key {key!r} is not a radiograph view") from None
