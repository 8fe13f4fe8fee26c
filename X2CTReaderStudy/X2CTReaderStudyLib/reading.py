"""What the reader panel asks for one reading item, how an answer is checked, and how the item is laid out.

Pure functions over the records of ``x2ct.readerstudy.study`` (passed in, never imported here), so that
they are tested without Slicer. Answer keys and values are the study's: ``call``, ``confidence``,
``anatomy``, ``consistency``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

CALL, CONFIDENCE, ANATOMY, CONSISTENCY = "call", "confidence", "anatomy", "consistency"
REAL_VS_SYNTHETIC, DIAGNOSIS = "real_vs_synthetic", "diagnosis"
XRAY, XRAY_CT = "xray", "xray+ct"
"""The keys and names of x2ct.readerstudy.study (checked equal by the tests)."""

CALL_CHOICES = {REAL_VS_SYNTHETIC: ("real", "synthetic"), DIAGNOSIS: ("present", "absent")}
CALL_SHORTCUTS = {"real": "R", "synthetic": "S", "present": "P", "absent": "A"}
"""Key that sets each call."""

DIAGNOSIS_SCORE_RANGE = (0, 100)
"""The diagnosis confidence: likelihood (%) that the disease is present, the ROC score."""


@dataclass(frozen=True)
class Question:
    """One answer widget: a choice (``choices``) or an integer rating in ``[low, high]``."""

    key: str
    label: str
    choices: Tuple[str, ...] = ()
    low: int = 0
    high: int = 0

    @property
    def isRating(self) -> bool:
        return not self.choices


def confidenceRange(confidenceScale: str) -> Tuple[int, int]:
    """(low, high) of the study's real-vs-synthetic confidence scale, "1-5" or "0-100"."""
    low, high = confidenceScale.split("-")
    return int(low), int(high)


def questionsFor(definition, item) -> List[Question]:
    """The questions of ``item`` (a ReadingItem) in the study ``definition`` (a StudyDefinition), in panel order."""
    if item.task == DIAGNOSIS:
        disease = definition.disease
        return [
            Question(CALL, f"Is {disease} present?", choices=CALL_CHOICES[DIAGNOSIS]),
            Question(CONFIDENCE, f"Likelihood of {disease} (%)", low=DIAGNOSIS_SCORE_RANGE[0],
                     high=DIAGNOSIS_SCORE_RANGE[1]),
        ]
    low, high = confidenceRange(definition.confidence_scale)
    points = int(definition.likert_points)
    return [
        Question(CALL, "This CT is", choices=CALL_CHOICES[REAL_VS_SYNTHETIC]),
        Question(CONFIDENCE, f"Confidence in the call ({low}-{high})", low=low, high=high),
        Question(ANATOMY, f"Anatomic correctness (1-{points})", low=1, high=points),
        Question(CONSISTENCY, f"Slice-to-slice consistency (1-{points})", low=1, high=points),
    ]


def checkAnswers(questions: Sequence[Question], answers: Mapping[str, object]) -> Dict[str, object]:
    """The answers to lock, one per question; ValueError naming the first missing or invalid one."""
    checked: Dict[str, object] = {}
    for question in questions:
        value = answers.get(question.key)
        if value is None or value == "":
            raise ValueError(f"Answer '{question.label}' before locking.")
        if question.choices:
            if value not in question.choices:
                raise ValueError(f"'{question.label}' must be one of {', '.join(question.choices)}, not {value!r}.")
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not question.low <= value <= question.high:
                raise ValueError(f"'{question.label}' must be a whole number from {question.low} to {question.high}.")
        checked[question.key] = value
    extra = sorted(set(answers) - set(checked))
    if extra:
        raise ValueError(f"This item does not ask {', '.join(extra)}.")
    return checked


def ratingForDigit(questions: Sequence[Question], answers: Mapping[str, object], digit: int) -> Optional[str]:
    """The question a digit key answers: the first unanswered rating whose scale holds ``digit`` (1-5 scales)."""
    for question in questions:
        if question.isRating and answers.get(question.key) is None and question.low <= digit <= question.high \
                and question.high <= 9:
            return question.key
    return None


def callForKey(questions: Sequence[Question], key: str) -> Optional[str]:
    """The call a letter key sets on this item (CALL_SHORTCUTS), or None."""
    for question in questions:
        for choice in question.choices:
            if CALL_SHORTCUTS.get(choice, "").lower() == key.lower():
                return choice
    return None


# --- layouts ---------------------------------------------------------------------------------------------------

PA, LATERAL, CT = "pa", "lateral", "ct"
"""Roles of a slice view: a radiograph (x2ct.views keys "pa", "lateral") or the CT."""

ViewSpec = Tuple[str, str, str]
"""(slice view name, role, orientation preset)."""

LAYOUT_CT = 60151
LAYOUT_PA = 60152
LAYOUT_PA_LATERAL = 60153
LAYOUT_PA_CT = 60154
LAYOUT_PA_LATERAL_CT = 60155
"""Ids of the module's view layouts (custom ids, above Slicer's own SlicerLayout* values)."""

_CT_ROW: List[ViewSpec] = [("Red", CT, "Axial"), ("Green", CT, "Coronal"), ("Yellow", CT, "Sagittal")]
_LAYOUT_ROWS: Dict[int, List[List[ViewSpec]]] = {
    LAYOUT_CT: [_CT_ROW],
    LAYOUT_PA: [[("Slice4", PA, "Coronal")]],
    LAYOUT_PA_LATERAL: [[("Slice4", PA, "Coronal"), ("Slice5", LATERAL, "Sagittal")]],
    LAYOUT_PA_CT: [[("Slice4", PA, "Coronal")], _CT_ROW],
    LAYOUT_PA_LATERAL_CT: [[("Slice4", PA, "Coronal"), ("Slice5", LATERAL, "Sagittal")], _CT_ROW],
}
_VIEW_LOOK = {"Red": ("R", "#F34A33"), "Green": ("G", "#6EB04B"), "Yellow": ("Y", "#EDD54C"),
              "Slice4": ("1", "#8C8C8C"), "Slice5": ("2", "#8C8C8C")}


def layoutFor(item) -> int:
    """The layout of a reading item: the CT in three planes, the radiograph(s) alone (1-up or side by side),
    or the radiograph(s) above the CT in three planes."""
    hasLateral = LATERAL in item.radiographs
    if item.task == REAL_VS_SYNTHETIC:
        return LAYOUT_CT
    if item.volume:
        return LAYOUT_PA_LATERAL_CT if hasLateral else LAYOUT_PA_CT
    return LAYOUT_PA_LATERAL if hasLateral else LAYOUT_PA


def layoutViews(layout: int) -> List[ViewSpec]:
    return [view for row in _LAYOUT_ROWS[layout] for view in row]


def layoutDescription(layout: int) -> str:
    """Slicer's layout XML (vtkMRMLLayoutNode::AddLayoutDescription): rows of slice views, top to bottom."""

    def view(name: str, orientation: str) -> str:
        label, color = _VIEW_LOOK[name]
        return (f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
                f'<property name="orientation" action="default">{orientation}</property>'
                f'<property name="viewlabel" action="default">{label}</property>'
                f'<property name="viewcolor" action="default">{color}</property></view></item>')

    rows = ['<item><layout type="horizontal">' + "".join(view(n, o) for n, _, o in row) + "</layout></item>"
            for row in _LAYOUT_ROWS[layout]]
    return '<layout type="vertical">' + "".join(rows) + "</layout>"
