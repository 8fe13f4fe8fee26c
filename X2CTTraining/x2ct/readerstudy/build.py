"""``x2ct reader-study build CASES.csv OUT``: a case list -> a blinded, self-contained study folder.

The case list (:func:`read_case_list`) names each case's radiographs, its real CT when there is one and its
truth. For every case the synthetic CT is generated (:func:`x2ct.inference.predict.predict`, the models of
``x2ct predict``) and written, with the real CT and the radiographs, into the layout of
:mod:`x2ct.readerstudy.study`.

Blinding:

* every file name and id is an opaque random hex id (:func:`secrets.token_hex`, not the study seed: the seed is
  in ``study.json``, which readers get, and ids drawn from it could be recomputed);
* real and synthetic CTs lie on the same grid, the synthetic CT's canonical 320 mm cube centred at the origin
  (:mod:`x2ct.geometry`; the real CT is body-centred on it and its table removed by
  :func:`x2ct.data.body.masked_canonical_ct`, as in the generators' training data), as int16 HU
  clipped to the generator's range (-1024..1476 HU, :mod:`x2ct.intensity`), in uncompressed NRRD without
  metadata keys, so their headers are byte for byte the same and their files the same size; every CT is shown
  with ``study.json``'s ``window_hu``;
* radiographs are float32 NRRD in [0, 1] (as read, dense bright) with their pixel spacing (1 mm when unknown)
  and no metadata keys;
* nothing from a source file's header and no input path is written; ``coordinator/key.json`` keeps the
  case list's ``case_id`` label;
* ``items.json`` is sorted by item id and every file gets the same modification time, so neither the order nor
  the time of writing tells which volume is real.

Sessions: in the sequential design everything is session 1. In the independent design half the cases
(chosen with the study seed) are read from the radiograph alone in session 1 and with the synthetic CT in
session 2, the other half the other way round. Real-vs-synthetic items go into the last session, after the
diagnosis items (:func:`x2ct.readerstudy.study.make_order`), so that no real CT is seen before a diagnosis.

The study is built in a temporary folder beside OUT and renamed into place (:func:`x2ct.atomic.atomic_dir`):
a bad case list, definition or input file leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_dir, exclusive_output
from ..data.body import masked_canonical_ct
from ..errors import InputError, PathLike
from ..geometry import CanonicalGrid
from ..inference.models import ModelCache
from ..inference.predict import predict
from ..inference.preprocess import read_input
from ..intensity import hu_to_unit, unit_to_hu
from ..io import Radiograph, read_ct
from ..userfiles import check_output_folder, listed_path, read_csv_table, read_text
from ..views import LATERAL, LATERAL_KEY, PA, PA_KEY
from .study import (
    DIAGNOSIS,
    INDEPENDENT,
    ITEMS_FILE,
    KEY_FILE,
    PHASES,
    RADIOGRAPHS_DIR,
    REAL_VS_SYNTHETIC,
    STUDY_FILE,
    VOLUMES_DIR,
    XRAY,
    CaseKey,
    ReadingItem,
    StudyDefinition,
    StudyKey,
    definition_from_dict,
    load_or_create_order,
    to_json,
    valid_reader_id,
)

CASE_COLUMNS = ("case_id", PA_KEY, LATERAL_KEY, "ct", "truth")
"""Columns of the case list; ``pa`` and ``truth`` are required, the others optional (column or cell)."""

VOLUME_DTYPE = np.int16
"""Voxel type of every CT in the study (whole HU)."""

ID_HEX_DIGITS = 16
"""Length of an opaque id (64 random bits)."""

DEFAULT_NAME = "X2CT reader study"
"""``study.json`` name when neither ``--name`` nor ``--definition`` gives one."""


@dataclass(frozen=True)
class StudyCase:
    """One row of the case list: ``label`` (its case_id, else ``line N``), CSV ``line``, ``truth`` 0/1, and files."""

    label: str
    line: int
    truth: int
    pa: Path
    lateral: Optional[Path]
    ct: Optional[Path]


@dataclass
class BuiltCase:
    """What one case put into the study: its key, its radiograph files by key (``pa``, ``lateral``) and the name of
    the generator that made its synthetic CT."""

    key: CaseKey
    radiographs: Dict[str, str]
    model: str


@dataclass
class BuildReport:
    """The finished study: its folder, cases, reading items and the readers given an order."""

    study: Path
    cases: int
    items: int
    readers: List[str]


# --------------------------------------------------------------------------------------------------
# Inputs


def _existing(cell: str, csv_path: Path, line: int, column: str) -> Optional[Path]:
    """The path of a non-blank cell (relative to the CSV's folder); InputError when it does not exist."""
    if not cell:
        return None
    path = listed_path(cell, csv_path)
    if not path.exists():
        raise InputError(csv_path, f"line {line}: {column} '{cell}' not found ({path})")
    return path


def read_case_list(path: PathLike) -> List[StudyCase]:
    """The cases of a case list CSV (:data:`CASE_COLUMNS`; ``x2ct reader-study build --help``), read by
    :func:`x2ct.userfiles.read_csv_table`.

    Raises InputError naming the CSV (and line) for a missing file or column, no cases, a blank ``pa``, a
    ``truth`` other than 0 or 1, a repeated ``case_id`` or a listed file that does not exist.
    """
    csv_path = Path(os.fspath(path))
    if not csv_path.is_file():
        raise InputError(csv_path, "case list not found")
    table = read_csv_table(csv_path)
    missing = [c for c in (PA_KEY, "truth") if c not in table.columns]
    if missing:
        raise InputError(csv_path, f"missing column(s) {', '.join(missing)}; expected {', '.join(CASE_COLUMNS)}")
    cases: List[StudyCase] = []
    for line, row in zip(table.lines, table.rows):
        label = row.get("case_id", "") or f"line {line}"
        if any(c.label == label for c in cases):
            raise InputError(csv_path, f"line {line}: case_id '{label}' appears twice")
        if row["truth"] not in ("0", "1"):
            raise InputError(csv_path, f"line {line}: truth '{row['truth']}' must be 1 (disease present) or 0")
        pa = _existing(row[PA_KEY], csv_path, line, PA_KEY)
        if pa is None:
            raise InputError(csv_path, f"line {line}: no {PA_KEY} radiograph")
        lateral = _existing(row.get(LATERAL_KEY, ""), csv_path, line, LATERAL_KEY)
        ct = _existing(row.get("ct", ""), csv_path, line, "ct")
        cases.append(StudyCase(label, line, int(row["truth"]), pa, lateral, ct))
    if not cases:
        raise InputError(csv_path, "the case list has no cases")
    return cases


def _definition_file(path: Path) -> dict:
    """The JSON object of a ``--definition`` file (checked with the overrides later)."""
    if not path.is_file():
        raise InputError(path, "study definition not found")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    definition_from_dict(data, path)
    return data


def definition_from_args(args: argparse.Namespace) -> StudyDefinition:
    """The study definition: ``--definition`` (else the defaults) with the options given on the command line."""
    data: dict = {"name": DEFAULT_NAME, "disease": ""}
    if args.definition:
        data = _definition_file(Path(args.definition))
    overrides = {
        "name": args.name,
        "disease": args.disease,
        "tasks": args.tasks.split(",") if args.tasks else None,
        "design": args.design,
        "confidence_scale": args.confidence_scale,
        "allow_back": args.allow_back,
        "washout_days": args.washout_days,
        "seed": args.seed,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    definition = definition_from_dict(data, None)
    if DIAGNOSIS in definition.tasks and not definition.disease.strip():
        raise InputError(None, "give --disease (what the diagnosis task asks about, e.g. 'pulmonary embolism')")
    return definition


def parse_readers(text: Optional[str]) -> List[str]:
    """Reader ids of ``--readers R1,R2``: each valid (:func:`x2ct.readerstudy.study.valid_reader_id`), none twice."""
    readers = [r.strip() for r in (text or "").split(",") if r.strip()]
    for reader in readers:
        if not valid_reader_id(reader):
            raise InputError(None, f"--readers: '{reader}' is not valid: use letters, digits, '-', '_' or '.' (1-40)")
    if len(set(readers)) != len(readers):
        raise InputError(None, "--readers: a reader id appears twice")
    return readers


# --------------------------------------------------------------------------------------------------
# Writing


class OpaqueIds:
    """Unique random hex ids (module doc: not derived from the study seed)."""

    def __init__(self) -> None:
        self._used: set = set()

    def new(self) -> str:
        while True:
            candidate = secrets.token_hex(ID_HEX_DIGITS // 2)
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate


def volume_image(volume_hu: np.ndarray) -> sitk.Image:
    """A (D, H, W) HU volume on the canonical grid as the study stores every CT: int16, clipped to the generator's
    range, centred at the origin, no metadata keys."""
    hu = np.rint(unit_to_hu(hu_to_unit(volume_hu))).astype(VOLUME_DTYPE)
    return CanonicalGrid(size=hu.shape[0]).image_from_array(hu)


def real_volume(path: Path, size: int) -> np.ndarray:
    """The real CT at ``path`` in HU on the canonical grid of ``size`` voxels per edge (body-centred), with the
    table and everything else outside the body set to air, as in the generators' training data
    (:func:`x2ct.data.body.masked_canonical_ct`): a table would tell the real CT from the synthetic one."""
    return sitk.GetArrayFromImage(masked_canonical_ct(read_ct(path), size=size, source=path))


def radiograph_image(radiograph: Radiograph) -> sitk.Image:
    """A radiograph as the study stores it: float32 [0, 1], spacing (mm; 1 when unknown), no metadata keys."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(radiograph.pixels, dtype=np.float32))
    row, column = radiograph.spacing_mm or (1.0, 1.0)
    image.SetSpacing((float(column), float(row)))
    return image


def _write(image: sitk.Image, path: Path, compress: bool) -> str:
    sitk.WriteImage(image, str(path), compress)
    return path.name


def _build_case(
    case: StudyCase, study: Path, cache: ModelCache, model: Optional[str], ids: OpaqueIds, case_id: str, real: bool
) -> BuiltCase:
    """Generate, match and write one case's volumes (the real CT only when ``real``: the real-vs-synthetic task)
    and radiographs; returns its key and radiograph files."""
    radiographs = {PA_KEY: read_input(case.pa, PA)}
    if case.lateral is not None:
        radiographs[LATERAL_KEY] = read_input(case.lateral, LATERAL)
    loaded = cache.get(model, have_lateral=case.lateral is not None)
    prediction = predict(loaded, radiographs[PA_KEY], radiographs.get(LATERAL_KEY))
    volumes = {"synthetic": prediction.volume_hu}
    if real and case.ct is not None:
        volumes["real"] = real_volume(case.ct, prediction.grid.size)
    names = {source: f"{ids.new()}.nrrd" for source in volumes}
    for source in sorted(volumes, key=names.get):  # written in id order, not real-then-synthetic
        _write(volume_image(volumes[source]), study / VOLUMES_DIR / names[source], compress=False)
    files = {
        key: _write(radiograph_image(r), study / RADIOGRAPHS_DIR / f"{ids.new()}.nrrd", compress=True)
        for key, r in radiographs.items()
    }
    key = CaseKey(case_id, case.truth, names.get("real"), names["synthetic"], source_label=case.label)
    return BuiltCase(key, files, loaded.name)


def xray_first(case_ids: Sequence[str], seed: int) -> set:
    """Independent design: the cases read from the radiograph alone in session 1 (half, rounded down, chosen with
    ``seed``); the others are read with the synthetic CT in session 1."""
    order = list(case_ids)
    random.Random(f"{seed}:counterbalance").shuffle(order)
    return set(order[: len(order) // 2])


def reading_items(definition: StudyDefinition, cases: Sequence[BuiltCase], ids: OpaqueIds) -> List[ReadingItem]:
    """Every reading item of the study (module doc: sessions), sorted by item id."""
    items: List[ReadingItem] = []
    independent = definition.design == INDEPENDENT and DIAGNOSIS in definition.tasks
    if DIAGNOSIS in definition.tasks:
        first = xray_first([c.key.case_id for c in cases], definition.seed)
        for case in cases:
            for phase in PHASES:
                session = 2 if independent and ((phase == XRAY) != (case.key.case_id in first)) else 1
                volume = None if phase == XRAY else case.key.synthetic_volume
                items.append(
                    ReadingItem(ids.new(), DIAGNOSIS, case.key.case_id, phase, session, volume, dict(case.radiographs))
                )
    if REAL_VS_SYNTHETIC in definition.tasks:
        for case in cases:
            for volume in (case.key.real_volume, case.key.synthetic_volume) if case.key.real_volume else ():
                items.append(ReadingItem(ids.new(), REAL_VS_SYNTHETIC, case.key.case_id, None, 2 if independent else 1,
                                         volume))  # fmt: skip
    return sorted(items, key=lambda it: it.item_id)


def _same_times(folder: Path, when: float) -> None:
    """Give every file and folder under ``folder`` the modification time ``when`` (module doc)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.utime(Path(root) / name, (when, when))


def _check_empty(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise InputError(out, "exists and is not empty; give a new (or empty) folder for the study")


def build_study(
    cases: Sequence[StudyCase],
    out: PathLike,
    definition: StudyDefinition,
    readers: Sequence[str] = (),
    model: Optional[str] = None,
    device: str = "auto",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> BuildReport:
    """Write the study folder ``out`` (module doc) from checked ``cases``; ``log`` gets one line per case.

    ``out`` must be new or an empty folder. Raises InputError for a study with the real-vs-synthetic task
    and no real CT, and for any input that cannot be read (nothing is left in ``out`` then).
    """
    if REAL_VS_SYNTHETIC in definition.tasks and not any(c.ct for c in cases):
        raise InputError(None, f"the {REAL_VS_SYNTHETIC} task needs real CTs, but no case has a ct")
    target = check_output_folder(out)
    _check_empty(target)
    cache = ModelCache(device, classifiers=())
    with exclusive_output(target) as locked:
        _check_empty(locked)
        with atomic_dir(locked) as study:
            for folder in (VOLUMES_DIR, RADIOGRAPHS_DIR, Path(KEY_FILE).parent):
                (study / folder).mkdir(parents=True)
            ids = OpaqueIds()
            built: List[BuiltCase] = []
            with_real = REAL_VS_SYNTHETIC in definition.tasks
            for number, case in enumerate(cases, start=1):
                built.append(_build_case(case, study, cache, model, ids, ids.new(), with_real))
                real = " and the real CT" if built[-1].key.real_volume else ""
                done = f"synthetic CT ({built[-1].model}){real} written"
                log(f"x2ct: case {number}/{len(cases)} ({case.label}): {done}")
            items = reading_items(definition, built, ids)
            (study / STUDY_FILE).write_text(to_json(definition), encoding="utf-8")
            (study / ITEMS_FILE).write_text(to_json(items), encoding="utf-8")
            (study / KEY_FILE).write_text(to_json(StudyKey([c.key for c in built])), encoding="utf-8")
            for reader in readers:
                load_or_create_order(study, reader)
            _same_times(study, time.time())
    return BuildReport(Path(locked), len(built), len(items), list(readers))


def run_build(args: argparse.Namespace) -> int:
    """``x2ct reader-study build``: check the definition, readers and case list, then build; exit status."""
    definition = definition_from_args(args)
    readers = parse_readers(args.readers)
    cases = read_case_list(args.cases)
    report = build_study(cases, args.out, definition, readers, args.model, args.device)
    given = f"; orders for {', '.join(report.readers)}" if report.readers else ""
    print(
        f"wrote {args.out}/: {report.cases} cases, {report.items} reading items{given}; "
        "give readers the folder without coordinator/"
    )
    return 0
