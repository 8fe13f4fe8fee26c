"""A tiny reader study and the blinding check, shared by X2CTReaderStudyTest (in Slicer) and
Testing/test_reader_study_panel.py (on slicer-core's MRML).

The study is written with the records of ``x2ct.readerstudy.study`` and SimpleITK, so it needs
neither torch nor ``x2ct reader-study build``: two cases read for diagnosis in the sequential design
(radiograph alone, then with the CT) and two real-vs-synthetic items of case 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np

from . import studyModule

CASE_VOLUMES = {"c1": ("v41d2.nrrd", "v9a07.nrrd"), "c2": ("v5e13.nrrd", "v0b88.nrrd")}
"""Case -> (real volume file, synthetic volume file), as the coordinator's key knows them."""
CASE_RADIOGRAPHS = {"c1": {"pa": "r7c21.nrrd", "lateral": "r3f40.nrrd"}, "c2": {"pa": "r66e5.nrrd"}}


def _writeImage(array: np.ndarray, path: Path, spacing) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def makeStudy(folder, allowBack: bool = False, design: str = "sequential", washoutDays: int = 28,
              windowHU=(-500.0, 1500.0)) -> List[str]:
    """Write a complete, tiny study folder; return the file names (volume and radiograph ids) it holds."""
    study = studyModule()
    folder = Path(folder)
    rng = np.random.default_rng(7)
    items: List[study.ReadingItem] = []
    files: List[str] = []
    for caseIndex, (case, (real, synthetic)) in enumerate(sorted(CASE_VOLUMES.items())):
        for name in (real, synthetic):
            _writeImage(rng.normal(-600, 300, (6, 8, 8)).astype(np.int16), folder / study.VOLUMES_DIR / name,
                        (1.5, 1.5, 2.0))
            files.append(name)
        for name in CASE_RADIOGRAPHS[case].values():
            _writeImage(rng.integers(0, 4000, (12, 10)).astype(np.uint16), folder / study.RADIOGRAPHS_DIR / name,
                        (0.5, 0.5))
            files.append(name)
        session = 2 if design == study.INDEPENDENT and caseIndex == 1 else 1
        items.append(study.ReadingItem(f"i{caseIndex}x", study.DIAGNOSIS, f"k{caseIndex}", study.XRAY, session,
                                       None, dict(CASE_RADIOGRAPHS[case])))
        items.append(study.ReadingItem(f"i{caseIndex}c", study.DIAGNOSIS, f"k{caseIndex}", study.XRAY_CT, session,
                                       synthetic, dict(CASE_RADIOGRAPHS[case])))
    real, synthetic = CASE_VOLUMES["c1"]
    items.append(study.ReadingItem("i8r", study.REAL_VS_SYNTHETIC, "k0", volume=real))
    items.append(study.ReadingItem("i9s", study.REAL_VS_SYNTHETIC, "k0", volume=synthetic))
    definition = study.StudyDefinition(name="Panel test", disease="tuberculosis", design=design,
                                       allow_back=allowBack, washout_days=washoutDays, seed=11,
                                       window_hu=list(windowHU))
    key = study.StudyKey([study.CaseKey(f"k{i}", i % 2, r, s) for i, (r, s) in
                          enumerate(v for _, v in sorted(CASE_VOLUMES.items()))])
    (folder / study.KEY_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / study.STUDY_FILE).write_text(study.to_json(definition), encoding="utf-8")
    (folder / study.ITEMS_FILE).write_text(study.to_json(items), encoding="utf-8")
    (folder / study.KEY_FILE).write_text(study.to_json(key), encoding="utf-8")
    return files


def nodeTexts(scene) -> Dict[str, List[str]]:
    """Every text a reader could see or look up on a node: its name, description, attributes and stored file
    names, by node ID."""
    texts: Dict[str, List[str]] = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        found = [node.GetName() or "", node.GetDescription() or ""]
        for attribute in node.GetAttributeNames() or ():
            found += [attribute, node.GetAttribute(attribute) or ""]
        for method in ("GetFileName", "GetURI"):
            if hasattr(node, method) and node.IsA("vtkMRMLStorageNode"):
                found.append(getattr(node, method)() or "")
        texts[node.GetID()] = found
    return texts


def revealingTexts(scene, secrets: Iterable[str]) -> List[str]:
    """"node: text" for every node text that contains one of ``secrets`` (case-insensitive); [] when blind."""
    lowered = [s.lower() for s in secrets if s]
    return [f"{nodeID}: {text}" for nodeID, texts in nodeTexts(scene).items() for text in texts
            if any(secret in text.lower() for secret in lowered)]


def blindingSecrets(folder, files: Iterable[str]) -> List[str]:
    """What must not appear in the scene: the study folder, each file name and id, and the word of the source."""
    return [str(Path(folder)), *files, *(Path(f).stem for f in files), "real", "synthetic", ".nrrd"]
