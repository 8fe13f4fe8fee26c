"""The reader-study folder: its definition, its cases, each reader's order and answers.

One module owns the layout, so that ``x2ct reader-study build`` (writes it), the Slicer panel
``X2CTReaderStudy`` (reads cases, appends answers) and ``x2ct reader-study analyze`` (reads
everything) cannot disagree. It imports only the standard library, so Slicer's Python 3.9 can use it
without torch.

Layout of a study folder ``STUDY``::

    STUDY/study.json                 StudyDefinition: tasks, scales, design; editable by the coordinator
    STUDY/items.json                 the reading items (ReadingItem), blinded: opaque ids only
    STUDY/volumes/<id>.nrrd          CTs (real and synthetic) on matched grids, header free of patient data
    STUDY/radiographs/<id>.nrrd      radiographs, header free of patient data
    STUDY/readers/<reader>/order.json   ReaderOrder: the reader's seeded item order, with its seed
    STUDY/readers/<reader>/answers.jsonl  one Answer per line, appended and fsync'ed when locked
    STUDY/coordinator/key.json       StudyKey: truth per case, which volume is real/synthetic; NOT for readers

Readers get the study folder without ``coordinator/``; the analysis needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError, PathLike

STUDY_FILE = "study.json"
ITEMS_FILE = "items.json"
VOLUMES_DIR = "volumes"
RADIOGRAPHS_DIR = "radiographs"
READERS_DIR = "readers"
ORDER_FILE = "order.json"
ANSWERS_FILE = "answers.jsonl"
KEY_FILE = "coordinator/key.json"
SCHEMA_VERSION = 1

# Task names (StudyDefinition.tasks, ReadingItem.task)
REAL_VS_SYNTHETIC = "real_vs_synthetic"
"""One CT shown: real or synthetic? With a confidence rating, plus the Likert ratings below."""
DIAGNOSIS = "diagnosis"
"""Disease present? With a confidence score usable for ROC; phase "xray" (radiograph alone) or "xray+ct"."""
TASKS = (REAL_VS_SYNTHETIC, DIAGNOSIS)

# Diagnosis phases = the MRMC "modalities"
XRAY = "xray"
XRAY_CT = "xray+ct"
PHASES = (XRAY, XRAY_CT)

# Designs of the diagnosis task
SEQUENTIAL = "sequential"
"""Same session: each case read with the radiograph alone, answer locked, then with the synthetic CT added."""
INDEPENDENT = "independent"
"""Separate sessions (washout between them), counterbalanced: half the cases read first without CT."""
DESIGNS = (SEQUENTIAL, INDEPENDENT)

# Answer keys
CALL = "call"
"""real_vs_synthetic: "real" or "synthetic"; diagnosis: "present" or "absent"."""
CONFIDENCE = "confidence"
"""real_vs_synthetic: confidence in the call on StudyDefinition.confidence_scale; diagnosis: likelihood that
the disease is present, 0-100 (the ROC score)."""
ANATOMY = "anatomy"
"""Likert 1-5: anatomic correctness."""
CONSISTENCY = "consistency"
"""Likert 1-5: slice-to-slice consistency."""


@dataclass
class StudyDefinition:
    """``study.json``: what the coordinator may edit before readers start.

    Attributes:
        name: shown to readers.
        disease: what the diagnosis task asks about, e.g. "tuberculosis" or "pulmonary embolism".
        tasks: which of TASKS the study runs.
        design: SEQUENTIAL or INDEPENDENT (diagnosis task).
        confidence_scale: "1-5" or "0-100" (the real-vs-synthetic confidence).
        likert_points: points of the Likert scales (5).
        allow_back: whether a reader may go back to change a locked answer (a new Answer line supersedes).
        washout_days: minimum days between the sessions of the independent design.
        seed: the study seed; each reader's order seed derives from it and the reader id.
        window_hu: (level, width) every CT is shown with, real and synthetic alike.
    """

    name: str
    disease: str
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    design: str = SEQUENTIAL
    confidence_scale: str = "1-5"
    likert_points: int = 5
    allow_back: bool = False
    washout_days: int = 28
    seed: int = 0
    window_hu: List[float] = field(default_factory=lambda: [-500.0, 1500.0])
    schema_version: int = SCHEMA_VERSION


@dataclass
class ReadingItem:
    """One screen a reader answers. Ids are opaque (they reveal neither the case nor the source).

    Attributes:
        item_id: opaque, unique in the study.
        task: REAL_VS_SYNTHETIC or DIAGNOSIS.
        case_id: opaque case id (the same for all items of one case).
        phase: DIAGNOSIS only: XRAY or XRAY_CT.
        session: 1 or 2 (2 only for the independent design's second session).
        volume: file under volumes/ shown, or None (diagnosis XRAY phase).
        radiographs: files under radiographs/ shown, keyed "pa" / "lateral" (x2ct.views keys).
    """

    item_id: str
    task: str
    case_id: str
    phase: Optional[str] = None
    session: int = 1
    volume: Optional[str] = None
    radiographs: Dict[str, str] = field(default_factory=dict)


@dataclass
class CaseKey:
    """Truth of one case (coordinator only). ``truth``: 1 disease present, 0 absent. ``real_volume`` and
    ``synthetic_volume``: the files under volumes/ (real may be None when the case list had no real CT)."""

    case_id: str
    truth: int
    real_volume: Optional[str]
    synthetic_volume: str
    source_label: str = ""
    """The case's row label in the coordinator's case list (never a patient identifier)."""


@dataclass
class StudyKey:
    """``coordinator/key.json``."""

    cases: List[CaseKey]
    schema_version: int = SCHEMA_VERSION


@dataclass
class ReaderOrder:
    """``readers/<reader>/order.json``: the order the reader sees the items in, and the seed that made it."""

    reader: str
    seed: int
    item_ids: List[str]


@dataclass
class Answer:
    """One locked answer (one line of ``answers.jsonl``).

    Attributes:
        reader, item_id: who answered what.
        answers: CALL / CONFIDENCE / ANATOMY / CONSISTENCY -> value (keys the item's task asks).
        reading_time_s: seconds between showing the item and locking the answer (monotonic clock).
        locked_at: wall-clock time of locking, ISO 8601 UTC.
    """

    reader: str
    item_id: str
    answers: Dict[str, object]
    reading_time_s: float
    locked_at: str


def reader_seed(study_seed: int, reader: str) -> int:
    """The order seed of ``reader``: stable across machines and Python versions (not ``hash()``)."""
    digest = hashlib.sha256(f"{study_seed}:{reader}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def valid_reader_id(reader: str) -> bool:
    """Reader ids are folder names: letters, digits, '-', '_' and '.', 1-40 characters, not starting with '.'."""
    return 0 < len(reader) <= 40 and not reader.startswith(".") and all(c.isalnum() or c in "-_." for c in reader)


def make_order(definition: StudyDefinition, items: Sequence[ReadingItem], reader: str) -> ReaderOrder:
    """The reader's item order: sessions in turn, items shuffled within a session with the reader's seed.

    In the SEQUENTIAL design a case's XRAY item always comes directly before its XRAY_CT item (the
    pair moves as one unit). Real-vs-synthetic items come after the diagnosis items of session 1.
    """
    if not valid_reader_id(reader):
        raise InputError(None, f"reader id '{reader}' is not valid: use letters, digits, '-', '_' or '.' (1-40)")
    seed = reader_seed(definition.seed, reader)
    rng = random.Random(seed)
    ordered: List[str] = []
    for session in sorted({item.session for item in items}):
        for task in (DIAGNOSIS, REAL_VS_SYNTHETIC):
            chosen = [it for it in items if it.session == session and it.task == task]
            if task == DIAGNOSIS and definition.design == SEQUENTIAL:
                units: Dict[str, List[ReadingItem]] = {}
                for it in chosen:
                    units.setdefault(it.case_id, []).append(it)
                groups = [sorted(g, key=lambda it: PHASES.index(it.phase or XRAY)) for g in units.values()]
            else:
                groups = [[it] for it in chosen]
            groups.sort(key=lambda g: g[0].item_id)  # the input order must not matter
            rng.shuffle(groups)
            ordered.extend(it.item_id for g in groups for it in g)
    return ReaderOrder(reader=reader, seed=seed, item_ids=ordered)


# --------------------------------------------------------------------------------------------------
# Reading and writing


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(path, "not found; is this a reader-study folder made by 'x2ct reader-study build'?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not valid UTF-8 JSON ({exc})") from None


def _record(cls, data: object, path: Path):
    """``cls(**data)`` with a one-line error for a wrong shape."""
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object for {cls.__name__}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InputError(path, f"does not match {cls.__name__} ({exc})") from None


def load_definition(study: PathLike) -> StudyDefinition:
    """Read and check ``study.json``."""
    path = Path(study) / STUDY_FILE
    return definition_from_dict(_read_json(path), path)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def definition_from_dict(data: object, path: Optional[PathLike]) -> StudyDefinition:
    """A checked StudyDefinition from parsed JSON; InputError naming ``path`` (the file it came from) otherwise."""
    definition = _record(StudyDefinition, data, path)
    texts = (definition.name, definition.disease, definition.design, definition.confidence_scale)
    if not all(isinstance(t, str) for t in texts) or not isinstance(definition.tasks, list):
        raise InputError(path, "name, disease, design and confidence_scale must be text and tasks a list")
    window = definition.window_hu
    if not isinstance(window, list) or len(window) != 2 or not all(map(_number, window)) or window[1] <= 0:
        raise InputError(path, "window_hu must be [level, width] in HU with width > 0")
    integers = (definition.seed, definition.washout_days, definition.likert_points)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in integers) or definition.seed < 0:
        raise InputError(path, "seed (>= 0), washout_days and likert_points must be whole numbers")
    if not isinstance(definition.allow_back, bool):
        raise InputError(path, "allow_back must be true or false")
    if not definition.tasks or any(t not in TASKS for t in definition.tasks):
        raise InputError(path, f"tasks must be a non-empty list of {', '.join(TASKS)}")
    if definition.design not in DESIGNS:
        raise InputError(path, f"design must be one of {', '.join(DESIGNS)}")
    if definition.confidence_scale not in ("1-5", "0-100"):
        raise InputError(path, "confidence_scale must be '1-5' or '0-100'")
    if definition.washout_days < 0 or definition.likert_points < 2:
        raise InputError(path, "washout_days must be >= 0 and likert_points >= 2")
    return definition


def load_items(study: PathLike) -> List[ReadingItem]:
    """Read ``items.json`` (a JSON list of ReadingItem objects)."""
    path = Path(study) / ITEMS_FILE
    data = _read_json(path)
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of reading items")
    items = [_record(ReadingItem, entry, path) for entry in data]
    if len({it.item_id for it in items}) != len(items):
        raise InputError(path, "item ids are not unique")
    return items


def load_key(study: PathLike) -> StudyKey:
    """Read ``coordinator/key.json``."""
    path = Path(study) / KEY_FILE
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise InputError(path, "expected an object with a 'cases' list")
    return StudyKey(cases=[_record(CaseKey, c, path) for c in data["cases"]],
                    schema_version=int(data.get("schema_version", SCHEMA_VERSION)))  # fmt: skip


def to_json(record) -> str:
    """A dataclass record (or a list of them) as indented JSON text."""
    data = [asdict(r) for r in record] if isinstance(record, list) else asdict(record)
    return json.dumps(data, indent=2) + "\n"


def reader_dir(study: PathLike, reader: str) -> Path:
    return Path(study) / READERS_DIR / reader


def load_or_create_order(study: PathLike, reader: str) -> ReaderOrder:
    """The reader's stored order; made (make_order) and stored atomically on the first call."""
    from ..atomic import write_text_atomic

    path = reader_dir(study, reader) / ORDER_FILE
    if path.exists():
        return _record(ReaderOrder, _read_json(path), path)
    order = make_order(load_definition(study), load_items(study), reader)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, to_json(order))
    return order


def append_answer(study: PathLike, answer: Answer) -> None:
    """Append one answer line to the reader's answer file and fsync it before returning."""
    path = reader_dir(study, answer.reader) / ANSWERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(answer), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_answers(study: PathLike, reader: str) -> List[Answer]:
    """The reader's answers in the order they were locked. A last line cut off by a crash (no newline,
    not JSON) is ignored; any other bad line is a one-line error naming the file and line."""
    path = reader_dir(study, reader) / ANSWERS_FILE
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    answers: List[Answer] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number == len(lines):  # the unterminated last line of an interrupted write
                continue
            raise InputError(path, f"line {number} is not a JSON answer record") from None
        answers.append(_record(Answer, data, path))
    return answers


def latest_answers(answers: Sequence[Answer]) -> Dict[str, Answer]:
    """item_id -> the answer that counts (the last one locked, when going back was allowed)."""
    return {a.item_id: a for a in answers}


def next_unanswered(order: ReaderOrder, answers: Sequence[Answer]) -> Optional[int]:
    """Index in ``order.item_ids`` of the first item without an answer (where a reader resumes); None when done."""
    done = {a.item_id for a in answers}
    return next((i for i, item in enumerate(order.item_ids) if item not in done), None)


def list_readers(study: PathLike) -> List[str]:
    """Reader ids that have a folder under readers/."""
    root = Path(study) / READERS_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
