"""Checks shared by X2CTReconTest (inside Slicer) and Testing/test_slicer_logic.py (pytest, real MRML).

Every function takes the ``slicer`` module it runs against, so the same assertions run in the Slicer
application and on slicer-core's MRML behind Testing/slicer_shim.py. They raise AssertionError with a
message.

Findings and Grad-CAM maps come from classifiers that the bundled demo generators do not carry, so
:func:`addStandInClassifierOutputs` writes deterministic stand-in maps with a single known peak into
a real prediction: where that peak lands in the scene proves the placement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .results import FINDINGS_COLUMNS

STAND_IN_OUTPUTS = ("nodule_present", "tb_present")
"""Finding outputs (label columns) of the stand-in classifier records."""


def sampleRadiographPaths() -> Tuple[Path, Path]:
    """(PA, lateral) sample PNGs bundled with x2ct's resources (Resources/SampleData/radiographs)."""
    from x2ct.resources import resources_dir

    folder = resources_dir() / "SampleData" / "radiographs"
    return folder / "pa.png", folder / "lateral.png"


def _peakMap(shape: Sequence[int], peak: Sequence[int]) -> np.ndarray:
    """Values in [0, 1] falling off with the distance (in voxels) from ``peak``; exactly 1 at ``peak``."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    squared = sum((grid - float(p)) ** 2 for grid, p in zip(grids, peak))
    return np.exp(-squared / (2.0 * (0.15 * min(shape)) ** 2)).astype(np.float32)


def standInPeaks(prediction) -> Dict[str, Tuple[int, ...]]:
    """Where the stand-in maps peak, by x2ct input key: CT (d, h, w) and each radiograph's (row, column), off-centre."""
    from x2ct.views import CT_KEY, input_key

    size = prediction.grid.size
    peaks: Dict[str, Tuple[int, ...]] = {CT_KEY: (size // 4, size // 2, (3 * size) // 4)}
    for view, prepared in prediction.views.items():
        rows, columns = prepared.radiograph.pixels.shape
        peaks[input_key(view)] = (rows // 3, columns // 5)
    return peaks


def addStandInClassifierOutputs(prediction, outputs: Sequence[str] = STAND_IN_OUTPUTS):
    """Fill ``prediction.findings`` (x2ct.inference.Finding records) and ``prediction.heat_maps`` with stand-ins;
    returns the prediction."""
    from x2ct.inference import Finding, HeatMaps
    from x2ct.views import CT_KEY, input_key

    peaks = standInPeaks(prediction)
    prediction.findings = [
        Finding(
            task=output.split("_")[0],
            output=output,
            label=f"stand-in {output.replace('_', ' ')}",
            probability=0.25 + 0.5 * index,
            threshold=0.5,
            call="positive" if 0.25 + 0.5 * index >= 0.5 else "negative",
            model=f"stand-in-{output}",
            weights_sha256="0" * 64,
            inputs=["synthetic CT", "PA radiograph"],
            ct_source=prediction.model.name,
            notes=[],
            guided_peak={},
        )
        for index, output in enumerate(outputs)
    ]
    heatMaps = HeatMaps()
    for output in outputs:
        heatMaps.ct[output] = _peakMap(prediction.grid.shape_dhw, peaks[CT_KEY])
        for view, prepared in prediction.views.items():
            heatMaps.radiographs.setdefault(view, {})[output] = _peakMap(
                prepared.radiograph.pixels.shape, peaks[input_key(view)]
            )
    prediction.heat_maps = heatMaps
    return prediction


def _ijkToRAS(slicer, volume) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def checkVolumeGeometry(slicer, volume, expectedIJKToRAS: np.ndarray, expectedVoxels: np.ndarray) -> None:
    """The node's IJKToRAS and voxels (K, J, I) are the expected ones."""
    np.testing.assert_allclose(_ijkToRAS(slicer, volume), expectedIJKToRAS, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), expectedVoxels)


def checkSyntheticCT(slicer, results) -> None:
    """Name, provenance, voxels and IJKToRAS of the CT node; RAS of voxels cross-checked with SimpleITK."""
    import SimpleITK as sitk

    prediction, volume = results.prediction, results.ctVolume
    assert "SYNTHETIC" in volume.GetName() and prediction.model.name in volume.GetName(), volume.GetName()
    assert "SYNTHETIC" in (volume.GetAttribute("X2CT.Synthetic") or ""), "provenance attribute missing"
    image = prediction.image()
    checkVolumeGeometry(slicer, volume, prediction.grid.ijk_to_ras(), sitk.GetArrayFromImage(image))
    matrix = _ijkToRAS(slicer, volume)
    size = prediction.grid.size
    for index in ((0, 0, 0), (size - 1, 0, 0), (0, size - 1, 0), (3, 5, size - 1)):
        lps = image.TransformIndexToPhysicalPoint(index)
        ras = matrix @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], (-lps[0], -lps[1], lps[2]), atol=1e-6)
    # Canonical axes: index i runs to the patient's left (RAS x falls), k runs inferior (RAS z falls).
    assert matrix[0, 0] < 0 and matrix[2, 2] < 0 and matrix[1, 1] < 0, matrix


def checkFindingsTable(results, findings: Sequence[Any]) -> None:
    """The findings table has the documented columns and one row per finding (x2ct.inference.Finding) with its texts."""
    table = results.findingsTable
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names == list(FINDINGS_COLUMNS), names
    assert table.GetNumberOfRows() == len(findings), (table.GetNumberOfRows(), len(findings))
    column = {name: index for index, name in enumerate(names)}
    for row, finding in enumerate(findings):
        for key in ("label", "output", "call", "model"):
            assert table.GetCellText(row, column[key]) == getattr(finding, key), (row, key)
        assert abs(float(table.GetCellText(row, column["probability"])) - finding.probability) < 1e-3


def _peakIndexKJI(slicer, volume) -> Tuple[int, ...]:
    voxels = slicer.util.arrayFromVolume(volume)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(voxels)), voxels.shape))


def checkHeatMaps(slicer, results, threshold: float) -> None:
    """Every stand-in map is in the scene on the right grid, peaks where it should, with heat display."""
    prediction = results.prediction
    peaks = standInPeaks(prediction)
    assert set(results.heatMaps) == {"ct", *results.radiographVolumes}, sorted(results.heatMaps)
    ctMatrix = _ijkToRAS(slicer, results.ctVolume)
    for output, volume in results.heatMaps["ct"].items():
        np.testing.assert_allclose(_ijkToRAS(slicer, volume), ctMatrix, atol=1e-9)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), prediction.heat_maps.ct[output], atol=1e-6)
        assert _peakIndexKJI(slicer, volume) == peaks["ct"], (output, _peakIndexKJI(slicer, volume))
    for source, radiograph in results.radiographVolumes.items():
        radiographMatrix = _ijkToRAS(slicer, radiograph)
        for output, volume in results.heatMaps[source].items():
            np.testing.assert_allclose(_ijkToRAS(slicer, volume), radiographMatrix, atol=1e-9)
            # Slicer's readers keep the file's pixel order, as x2ct does: the peak keeps its (row, column).
            peak = _peakIndexKJI(slicer, volume)
            assert peak == (0, *peaks[source]), (source, output, peak)
    for maps in results.heatMaps.values():
        for volume in maps.values():
            display = volume.GetScalarVolumeDisplayNode()
            assert display.GetColorNodeID() in (
                "vtkMRMLColorTableNodeFileInferno.txt",
                "vtkMRMLColorTableNodeIron",
            ), display.GetColorNodeID()
            assert display.GetApplyThreshold() == 1
            assert abs(display.GetLowerThreshold() - threshold) < 1e-9, display.GetLowerThreshold()
            assert not display.GetAutoWindowLevel()


def _sliceLayers(slicer) -> List[Tuple[str, str, float]]:
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    assert count > 0, "the scene has no slice views"
    layers = []
    for index in range(count):
        composite = slicer.mrmlScene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        layers.append(
            (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetForegroundOpacity())
        )
    return layers


def checkSliceLayers(slicer, results, logic) -> None:
    """CT + CT heat map after showPrediction; radiograph + its heat map on request; opacity and threshold."""
    output = results.heatMapOutputs[0]
    ct, ctMap = results.ctVolume.GetID(), results.heatMaps["ct"][output].GetID()
    assert all(layer[:2] == (ct, ctMap) for layer in _sliceLayers(slicer)), _sliceLayers(slicer)
    for source, radiograph in results.radiographVolumes.items():
        logic.showSliceLayers(results, source, output, opacity=0.6)
        expected = (radiograph.GetID(), results.heatMaps[source][output].GetID(), 0.6)
        assert all(layer == expected for layer in _sliceLayers(slicer)), (source, _sliceLayers(slicer))
    logic.setHeatMapOpacity(0.2)
    assert all(abs(layer[2] - 0.2) < 1e-9 for layer in _sliceLayers(slicer))
    logic.setHeatMapThreshold(results, 0.7)
    for maps in results.heatMaps.values():
        for volume in maps.values():
            assert abs(volume.GetScalarVolumeDisplayNode().GetLowerThreshold() - 0.7) < 1e-9


def runInBackground(slicer, logic, paVolume, cancelAtOnce: bool) -> Dict[str, Any]:
    """Start a non-blocking reconstruction (PA only, CPU); the record fills in as the GUI thread polls."""
    record: Dict[str, Any] = {
        "progress": [],
        "volumesBefore": slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"),
    }

    def completed(results, error) -> None:
        record.update(results=results, error=error, completed=True,
                      volumesAfter=slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))

    returned = logic.process(paVolume, None, device="cpu", waitForCompletion=False, showResult=False,
                             progressCallback=lambda f, m: record["progress"].append((f, m)),
                             completedCallback=completed)
    record["returned"] = returned
    record["runningAfterStart"] = logic.isRunning
    if cancelAtOnce:
        logic.cancel()
    return record


def checkBackgroundRecord(record: Dict[str, Any], cancelled: bool) -> None:
    assert record["returned"] is None and record["runningAfterStart"], "process() must return at once"
    assert record.get("completed"), "completedCallback was not called"
    fractions = [fraction for fraction, _ in record["progress"]]
    assert fractions == sorted(fractions), fractions
    if cancelled:
        assert record["results"] is None
        assert type(record["error"]).__name__ == "PredictionCancelled", repr(record["error"])
        assert record["volumesAfter"] == record["volumesBefore"], "a cancelled run added volumes"
    else:
        assert record["error"] is None, repr(record["error"])
        assert record["results"] is not None and "SYNTHETIC" in record["results"].ctVolume.GetName()
        assert fractions[-1] == 1.0 and len(fractions) >= 4, record["progress"]
        heatMaps = sum(len(maps) for maps in record["results"].heatMaps.values())
        assert record["volumesAfter"] == record["volumesBefore"] + 1 + heatMaps, "one CT plus its heat maps"
