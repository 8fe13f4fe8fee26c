"""The answers of a reader study as readings: from a study folder (:mod:`x2ct.readerstudy.study`) or a long-format
scores CSV (``reader,modality,case,truth,score[,call]``). See :mod:`x2ct.readerstudy.analyze`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InputError
from ..userfiles import read_csv_table
from . import study as st

SCORE_COLUMNS = ("reader", "modality", "case", "truth", "score")
"""Columns of the long-format scores CSV (input and ``scores.csv``)."""
CALL_COLUMN = "call"
"""Optional column of the input CSV: the reader's binary call, 1 = disease present."""


# ------------------------------------------------------------------------------------------ readings


@dataclass(frozen=True)
class Reading:
    """One diagnosis read: ``score`` is the confidence that disease is present (0-100 in a study), ``call`` the
    binary call (1 present, 0 absent; None when the input has none), ``reading_time_s`` None from a CSV."""

    reader: str
    modality: str
    case: str
    truth: int
    score: float
    call: Optional[int] = None
    reading_time_s: Optional[float] = None


@dataclass(frozen=True)
class VolumeReading:
    """One real-vs-synthetic read of a volume: ``is_real`` the truth, ``called_real`` the reader's call, and the
    Likert ratings (None when not asked)."""

    reader: str
    case: str
    is_real: bool
    called_real: bool
    confidence: Optional[float]
    anatomy: Optional[int]
    consistency: Optional[int]
    reading_time_s: float


@dataclass
class StudyData:
    """What the analysis reads: ``modalities = [reference, test]`` (one entry when only one was read)."""

    source: str
    name: str
    modalities: List[str]
    readings: List[Reading]
    volume_readings: List[VolumeReading] = field(default_factory=list)


def _check_id(value: str, what: str, path: Path, where: str) -> str:
    """Ids go into CSV and iMRMC files unquoted: non-empty, no commas, no whitespace."""
    if not value or "," in value or any(c.isspace() for c in value):
        raise InputError(path, f"{where}: {what} '{value}' must be non-empty, without commas or spaces")
    return value


def load_scores_csv(path: Path) -> StudyData:
    """Read a long-format scores CSV (module doc). InputError naming the file and line for a missing column, a
    truth other than 0/1, a non-numeric score or call, a case with two truths, or a repeated read."""
    table = read_csv_table(path)
    missing = [c for c in SCORE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; need {','.join(SCORE_COLUMNS)}")
    if not table.rows:
        raise InputError(path, "has no score rows")
    readings: List[Reading] = []
    truths: Dict[str, int] = {}
    seen = set()
    modalities: List[str] = []
    for row, line in zip(table.rows, table.lines):
        where = f"line {line}"
        reader, modality, case = (_check_id(row[c], c, path, where) for c in ("reader", "modality", "case"))
        if row["truth"] not in ("0", "1"):
            raise InputError(path, f"{where}: truth must be 0 or 1, got '{row['truth']}'")
        truth = int(row["truth"])
        try:
            score = float(row["score"])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise InputError(path, f"{where}: score must be a finite number, got '{row['score']}'")
        cell = row.get(CALL_COLUMN, "")
        if cell not in ("", "0", "1"):
            raise InputError(path, f"{where}: call must be 0, 1 or blank, got '{cell}'")
        if truths.setdefault(case, truth) != truth:
            raise InputError(
                path, f"{where}: case '{case}' has truth {truth} here and {truths[case]} on an earlier line"
            )
        if (reader, modality, case) in seen:
            raise InputError(path, f"{where}: reader '{reader}' read case '{case}' in '{modality}' twice")
        seen.add((reader, modality, case))
        if modality not in modalities:
            modalities.append(modality)
        readings.append(Reading(reader, modality, case, truth, score, int(cell) if cell else None))
    if len(modalities) > 2:
        raise InputError(path, f"has {len(modalities)} modalities ({', '.join(modalities)}); the analysis compares 2")
    return StudyData("scores_csv", path.stem, modalities, readings)


def _reading_time(answer: st.Answer, path: Path) -> float:
    """The answer's reading time in seconds; InputError unless ``answers`` is an object and the time a finite
    number >= 0."""
    if not isinstance(answer.answers, dict):
        raise InputError(path, f"item {answer.item_id}: 'answers' must be a JSON object")
    value = answer.reading_time_s
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
        raise InputError(path, f"item {answer.item_id}: reading_time_s must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _number(answer: st.Answer, key: str, low: float, high: float, path: Path, required: bool) -> Optional[float]:
    """A numeric answer in [low, high]; None when absent and not required; InputError otherwise."""
    value = answer.answers.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InputError(
            path, f"item {answer.item_id}: answer '{key}' must be a number in {low:g}-{high:g}, got {value!r}"
        )
    return float(value)


def _call(answer: st.Answer, choices: Tuple[str, str], path: Path) -> bool:
    """True for ``choices[0]``, False for ``choices[1]``; InputError for anything else."""
    value = answer.answers.get(st.CALL)
    if value not in choices:
        raise InputError(
            path, f"item {answer.item_id}: answer 'call' must be '{choices[0]}' or '{choices[1]}', got {value!r}"
        )
    return value == choices[0]


def load_study(folder: Path) -> StudyData:
    """Read a study folder's definition, items, key and every reader's answers (the last locked answer of an
    item counts). InputError naming the file for an answer to an unknown item or an answer out of range."""
    definition = st.load_definition(folder)
    items = {item.item_id: item for item in st.load_items(folder)}
    key_path = folder / st.KEY_FILE
    cases = {case.case_id: case for case in st.load_key(folder).cases}
    likert = float(definition.likert_points)
    confidence = (1.0, 5.0) if definition.confidence_scale == "1-5" else (0.0, 100.0)
    readings: List[Reading] = []
    volume_readings: List[VolumeReading] = []
    for reader in st.list_readers(folder):
        path = st.reader_dir(folder, reader) / st.ANSWERS_FILE
        for answer in st.latest_answers(st.read_answers(folder, reader)).values():
            item = items.get(answer.item_id)
            if item is None:
                raise InputError(path, f"item {answer.item_id} is not in {st.ITEMS_FILE}")
            if item.task not in st.TASKS:
                raise InputError(
                    folder / st.ITEMS_FILE, f"item {item.item_id}: task must be one of {', '.join(st.TASKS)}"
                )
            seconds = _reading_time(answer, path)
            case = cases.get(item.case_id)
            if case is None:
                raise InputError(key_path, f"has no truth for case {item.case_id} (item {item.item_id})")
            if case.truth not in (0, 1) or isinstance(case.truth, bool):
                raise InputError(key_path, f"case {case.case_id}: truth must be 0 or 1, got {case.truth!r}")
            if item.task == st.DIAGNOSIS:
                present = _call(answer, ("present", "absent"), path)
                score = _number(answer, st.CONFIDENCE, 0.0, 100.0, path, required=True)
                readings.append(Reading(reader, item.phase or st.XRAY, item.case_id, int(case.truth), float(score),
                                        int(present), seconds))  # fmt: skip
            else:
                volume_readings.append(VolumeReading(
                    reader=reader,
                    case=item.case_id,
                    is_real=item.volume is not None and item.volume == case.real_volume,
                    called_real=_call(answer, ("real", "synthetic"), path),
                    confidence=_number(answer, st.CONFIDENCE, *confidence, path, required=False),
                    anatomy=_likert(_number(answer, st.ANATOMY, 1.0, likert, path, required=False)),
                    consistency=_likert(_number(answer, st.CONSISTENCY, 1.0, likert, path, required=False)),
                    reading_time_s=seconds,
                ))  # fmt: skip
    if not readings and not volume_readings:
        raise InputError(folder, "no reader has locked an answer yet (readers/*/answers.jsonl)")
    modalities = [p for p in st.PHASES if any(r.modality == p for r in readings)]
    return StudyData("study", definition.name, modalities, readings, volume_readings)


def _likert(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(round(value))


def load_input(path: Path) -> StudyData:
    """A study folder or a scores CSV, by what ``path`` is."""
    if path.is_dir():
        return load_study(path)
    if not path.exists():
        raise InputError(path, "not found; give a study folder or a scores CSV")
    return load_scores_csv(path)
