"""X2CTReconLogic, the batch script and X2CTReconLib on Slicer's real MRML (slicer-core) behind Testing/slicer_shim.py.

The scene checks are X2CTReconLib.selftest's, the same functions X2CTReconTest runs inside Slicer.
The real x2ct pipeline runs with the bundled demo models on the bundled sample radiographs, rewritten
as NRRD/MHA (slicer-core has no PNG reader; PNG loading is tested through x2ct). Findings and Grad-CAM
maps are stand-ins (see selftest). Without slicer-core only the X2CTReconLib helper tests run.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
import types
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

import slicer_shim

pytestmark = pytest.mark.usefixtures("one_thread")
needs_mrml = pytest.mark.skipif(not slicer_shim.available(), reason=slicer_shim.MISSING_REASON)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "X2CTRecon"
MODULE_NAMES = ("X2CTRecon", "X2CTReconLib", "X2CTReconLib.background", "X2CTReconLib.dependencies",
                "X2CTReconLib.results", "X2CTReconLib.selftest", "x2ct_batch")


def _import_module(monkeypatch, tmp_path, **options):
    fake = slicer_shim.install(monkeypatch, str(tmp_path), **options)
    monkeypatch.setattr(sys, "path", [str(MODULE_DIR), str(MODULE_DIR / "Scripts"), *sys.path])
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import X2CTRecon

    return X2CTRecon, fake


@pytest.fixture()
def recon(monkeypatch, tmp_path):
    """(X2CTRecon module, slicer) without views, like ``Slicer --no-main-window``."""
    yield _import_module(monkeypatch, tmp_path)
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)


@pytest.fixture()
def recon_gui(monkeypatch, tmp_path):
    """(X2CTRecon module, slicer) with a layout manager and three slice views, like the Slicer window."""
    yield _import_module(monkeypatch, tmp_path, withViews=True)
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)


def _logic(module):
    logic = module.X2CTReconLogic()
    logic.checkDependencies(requireTorch=False)
    return logic


def _sampleFiles(folder: Path) -> Tuple[Path, Path]:
    """The bundled sample radiographs (PNG, which slicer-core cannot read) rewritten as PA NRRD and lateral MHA."""
    from X2CTReconLib import selftest

    written = []
    for png, suffix in zip(selftest.sampleRadiographPaths(), (".nrrd", ".mha")):
        path = folder / f"{png.stem}{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(png)), str(path))
        written.append(path)
    return written[0], written[1]


def _samples(fake, folder: Path):
    """The sample radiographs loaded as Slicer's "Add Data" does (loadVolume's default ``show``)."""
    return tuple(fake.util.loadVolume(str(path), {"singleFile": True}) for path in _sampleFiles(folder))


def _compositeNodes(fake) -> list:
    scene = fake.mrmlScene
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    return [scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode") for index in range(count)]


def _matrix(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


# --- the checks X2CTReconTest runs in Slicer ---------------------------------------------------------------


@needs_mrml
def test_reconstruct_sample_radiographs_in_the_scene(recon_gui, tmp_path):
    """X2CTReconTest.test_ReconstructSampleRadiographs: CT geometry, table, heat maps, layers, layout, 3D."""
    module, fake = recon_gui
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    # Slicer's reader shows what it loads: the slice logics' composite nodes get the last volume.
    assert [c.GetBackgroundVolumeID() for c in _compositeNodes(fake)] == [lateral.GetID()] * 3
    volumeRendering = fake.modules.volumerendering.logic()
    results = logic.process(pa, lateral, device="cpu", waitForCompletion=True)
    assert results.prediction.model.name == "x2ct-demo-biplanar"
    selftest.checkSyntheticCT(fake, results)
    selftest.checkFindingsTable(results, results.prediction.findings)
    outputs = sorted(f.output for f in results.prediction.findings)  # the bundled demo classifiers
    assert outputs == ["pe_present", "tb_active", "tb_calcification", "tb_cavitation", "tb_granuloma", "tb_present"]
    assert results.heatMapOutputs == outputs and set(results.heatMaps) == {"ct", "pa"}
    assert fake.app.layoutManager().layout == fake.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    rendering = volumeRendering.GetFirstVolumeRenderingDisplayNode(results.ctVolume)
    assert rendering.GetVolumeNodeID() == results.ctVolume.GetID() and rendering.GetVisibility() == 1
    assert rendering.GetVolumePropertyNode().GetName() == module.VOLUME_RENDERING_PRESET
    assert {"function": "resetThreeDViews"} in slicer_shim.calls
    ctDisplay = results.ctVolume.GetScalarVolumeDisplayNode()
    assert not ctDisplay.GetAutoWindowLevel()  # real loaders and addVolumeFromArray start with auto W/L
    assert (ctDisplay.GetWindow(), ctDisplay.GetLevel()) == pytest.approx(module.CT_WINDOW_LEVEL_HU)

    prediction = selftest.addStandInClassifierOutputs(results.prediction)
    results = logic.showPrediction(prediction, pa, lateral, heatMapThreshold=0.25)
    selftest.checkFindingsTable(results, prediction.findings)
    selftest.checkHeatMaps(fake, results, threshold=0.25)
    selftest.checkSliceLayers(fake, results, logic)
    assert results.heatMapOutputs == sorted(selftest.STAND_IN_OUTPUTS)
    for maps in results.heatMaps.values():  # the real default thresholds are -32768..32767
        assert all(v.GetScalarVolumeDisplayNode().GetUpperThreshold() == 1.0 for v in maps.values())


@needs_mrml
def test_the_modules_own_self_test_passes(recon_gui, tmp_path, monkeypatch):
    """X2CTReconTest.runTest as "Reload and Test" runs it in Slicer, with the samples as NRRD/MHA (no PNG reader)."""
    module, fake = recon_gui
    _install_torch_extension(monkeypatch)
    from X2CTReconLib import selftest

    files = _sampleFiles(tmp_path)
    monkeypatch.setattr(selftest, "sampleRadiographPaths", lambda: files)
    module.X2CTReconTest().runTest()
    volumes = [fake.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
               for i in range(fake.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert "SYNTHETIC CT (x2ct-demo-singleview)" in volumes  # left by the last test, the background run


@needs_mrml
def test_volume_rendering_starts_hidden_and_the_module_shows_it(recon_gui, tmp_path):
    """Real display nodes start visible; hide one first so that the module's SetVisibility(1) is what is checked."""
    module, fake = recon_gui
    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", showResult=False)
    volumeRendering = fake.modules.volumerendering.logic()
    display = volumeRendering.CreateDefaultVolumeRenderingNodes(results.ctVolume)
    display.SetVisibility(0)
    logic.showLayout(results.ctVolume)
    assert volumeRendering.GetFirstVolumeRenderingDisplayNode(results.ctVolume) is display  # reused, not a new one
    assert display.GetVisibility() == 1
    assert display.GetVolumePropertyNode().GetName() == module.VOLUME_RENDERING_PRESET


def _axis(matrix, column: int) -> np.ndarray:
    vector = np.array([matrix.GetElement(row, column) for row in range(3)])
    return vector / np.linalg.norm(vector)


@needs_mrml
def test_slice_views_rotate_to_the_shown_volume(recon_gui, tmp_path):
    """RotateToVolumePlane on the real slice nodes: each view's normal follows the volume axis nearest to it."""
    module, fake = recon_gui
    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", showResult=False)
    angle = np.radians(30.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]  # about S
    tilted = rotation @ fake.util.arrayFromVTKMatrix(_matrix(results.ctVolume))
    results.ctVolume.SetIJKToRASMatrix(fake.util.vtkMatrixFromArray(tilted))
    layoutManager = fake.app.layoutManager()
    red = layoutManager.sliceWidget("Red").mrmlSliceNode()
    assert abs(_axis(red.GetSliceToRAS(), 0) @ _axis(_matrix(results.ctVolume), 0)) < 0.9  # not yet rotated
    logic.showSliceLayers(results, "ct", results.heatMapOutputs[0])
    ct = _matrix(results.ctVolume)
    # volume axes i, j, k run along R, A, S (rotated 30 degrees about S): Yellow (sagittal) looks along i,
    # Green (coronal) along j and Red (axial) along k; Red's in-plane x axis follows i.
    for view, axis in (("Yellow", 0), ("Green", 1), ("Red", 2)):
        normal = _axis(layoutManager.sliceWidget(view).mrmlSliceNode().GetSliceToRAS(), 2)
        assert abs(normal @ _axis(ct, axis)) == pytest.approx(1.0, abs=1e-6), view
    assert abs(_axis(red.GetSliceToRAS(), 0) @ _axis(ct, 0)) == pytest.approx(1.0, abs=1e-6)


@needs_mrml
def test_a_new_run_shows_heat_maps_with_the_parameter_nodes_threshold_and_opacity(recon_gui, tmp_path):
    """process() without explicit values takes the heat-map threshold and opacity from the parameter node (the
    panel's sliders), not showPrediction's defaults."""
    module, fake = recon_gui
    logic = _logic(module)
    parameters = logic.getParameterNode()
    parameters.heatMapThreshold, parameters.heatMapOpacity = 0.65, 0.85
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", waitForCompletion=True)
    maps = [volume for byOutput in results.heatMaps.values() for volume in byOutput.values()]
    thresholds = [volume.GetScalarVolumeDisplayNode().GetLowerThreshold() for volume in maps]
    assert thresholds and thresholds == pytest.approx([0.65] * len(thresholds))  # the demo classifiers' maps
    assert _foregroundOpacities(fake) == pytest.approx([0.85] * 3)  # the three slice views
    # values given to process() win over the parameter node's
    results = logic.process(pa, lateral, device="cpu", heatMapThreshold=0.2, heatMapOpacity=0.3)
    volume = next(iter(results.heatMaps["ct"].values()))
    assert volume.GetScalarVolumeDisplayNode().GetLowerThreshold() == pytest.approx(0.2)
    assert _foregroundOpacities(fake) == pytest.approx([0.3] * 3)


def _foregroundOpacities(fake) -> List[float]:
    """The foreground opacity of every slice view of the scene."""
    return [composite.GetForegroundOpacity() for composite in _compositeNodes(fake)]


@needs_mrml
def test_background_run_reports_progress_and_cancel_adds_nothing(recon, tmp_path):
    """X2CTReconTest.test_BackgroundRunAndCancel: non-blocking runs polled by single-shot timers."""
    module, fake = recon
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, _ = _samples(fake, tmp_path)
    record = selftest.runInBackground(fake, logic, pa, cancelAtOnce=False)
    assert slicer_shim.runEventLoop(lambda: record.get("completed"))
    selftest.checkBackgroundRecord(record, cancelled=False)
    assert not logic.isRunning
    assert record["results"].prediction.model.name == "x2ct-demo-singleview"

    record = selftest.runInBackground(fake, logic, pa, cancelAtOnce=True)
    assert slicer_shim.runEventLoop(lambda: record.get("completed"))
    selftest.checkBackgroundRecord(record, cancelled=True)
    assert logic.errorMessage(record["error"]).startswith("Cancelled")


@needs_mrml
@pytest.mark.parametrize("where, function, nextStage", [
    ("x2ct.inference.run", "run_generator", "re-projection check"),
    ("x2ct.inference.predict", "run_classifiers", "prediction done"),
])
def test_cancel_in_the_middle_of_a_stage_stops_at_its_end(recon, tmp_path, monkeypatch, where, function, nextStage):
    """Cancel pressed while the generator (or the classifiers) run: the worker thread finishes that stage, then
    stops at the next boundary with PredictionCancelled; no later stage starts and nothing reaches the scene."""
    import importlib

    module, fake = recon
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, _ = _samples(fake, tmp_path)
    stageModule = importlib.import_module(where)
    real = getattr(stageModule, function)
    inside, cancelled, finished = threading.Event(), threading.Event(), threading.Event()

    def slowStage(*args, **kwargs):
        inside.set()
        assert cancelled.wait(30), "the test did not cancel"
        result = real(*args, **kwargs)
        finished.set()
        return result

    monkeypatch.setattr(stageModule, function, slowStage)
    record = selftest.runInBackground(fake, logic, pa, cancelAtOnce=False)
    assert inside.wait(60), f"{function} never ran"
    logic.cancel()
    cancelled.set()
    assert slicer_shim.runEventLoop(lambda: record.get("completed"))
    selftest.checkBackgroundRecord(record, cancelled=True)
    assert finished.is_set()  # the stage itself is not interrupted (a thread cannot be killed)
    messages = [message for _, message in record["progress"]]
    assert nextStage not in messages and not any(m.startswith("adding the results") for m in messages), messages


@needs_mrml
def test_volume_from_canonical_image_geometry(recon):
    """X2CTReconTest.test_AddVolumeFromImageGeometry."""
    module, fake = recon
    from X2CTReconLib import selftest

    from x2ct.geometry import CanonicalGrid

    grid = CanonicalGrid(size=64, center_lps=(12.0, -30.0, 100.5))
    voxels = np.random.default_rng(0).random(grid.shape_dhw, dtype=np.float32)
    node = _logic(module).addVolumeFromImage(grid.image_from_array(voxels), "SYNTHETIC test")
    selftest.checkVolumeGeometry(fake, node, grid.ijk_to_ras(), voxels)
    assert node.GetName() == "SYNTHETIC test"


def _valueAtRAS(fake, volume, ras) -> float:
    """The voxel of ``volume`` whose centre is at ``ras`` (mm)."""
    ijk = np.linalg.inv(fake.util.arrayFromVTKMatrix(_matrix(volume))) @ np.array([*ras, 1.0])
    index = np.rint(ijk[:3]).astype(int)
    assert np.allclose(ijk[:3], index, atol=1e-4), ijk
    return float(fake.util.arrayFromVolume(volume)[index[2], index[1], index[0]])


@needs_mrml
def test_left_handed_ct_is_flipped_by_slicer_and_placed_alike_by_the_module(recon, sample_ct_path):
    """The sample CT is left-handed in RAS. Slicer's reader (>= 5.8) flips its k axis; the module keeps SimpleITK's
    voxel order. Both must put every voxel at the same RAS position."""
    module, fake = recon
    loaded = fake.util.loadVolume(str(sample_ct_path), {"singleFile": True, "show": False})
    matrix = fake.util.arrayFromVTKMatrix(_matrix(loaded))
    assert matrix[2, 2] == pytest.approx(-2.5) and matrix[2, 3] == pytest.approx(-10.0)  # file: +2.5, z -340
    assert np.linalg.det(matrix[:3, :3]) > 0
    image = sitk.ReadImage(str(sample_ct_path))
    added = _logic(module).addVolumeFromImage(image, "as SimpleITK reads it")
    assert np.linalg.det(fake.util.arrayFromVTKMatrix(_matrix(added))[:3, :3]) < 0
    size = image.GetSize()
    for index in ((0, 0, 0), (size[0] - 1, 3, 7), (20, size[1] - 1, size[2] - 1), (70, 80, 60)):
        lps = image.TransformIndexToPhysicalPoint(index)
        ras = (-lps[0], -lps[1], lps[2])
        expected = float(image[index])
        assert _valueAtRAS(fake, loaded, ras) == expected == _valueAtRAS(fake, added, ras), index


@needs_mrml
def test_checks_catch_a_misplaced_ct(recon, tmp_path):
    """The shared geometry check fails on an LPS matrix used as RAS (the mistake it guards against)."""
    module, fake = recon
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", showResult=False)
    results.ctVolume.SetIJKToRASMatrix(fake.util.vtkMatrixFromArray(np.asarray(results.prediction.grid.ijk_to_lps())))
    with pytest.raises(AssertionError):
        selftest.checkSyntheticCT(fake, results)


# --- radiograph heat maps and loaders ---------------------------------------------------------------------


@needs_mrml
def test_radiograph_heat_map_follows_a_loader_that_reverses_rows(recon):
    module, fake = recon
    logic = _logic(module)
    rows, columns = 90, 70
    y, x = np.mgrid[0:rows, 0:columns]
    x2ctPixels = (0.2 + 0.6 * (y / rows) ** 2 + 0.1 * np.sin(x / 7.0)).astype(np.float32)  # not symmetric
    heatMap = np.zeros((rows, columns), np.float32)
    heatMap[10, 50] = 1.0
    matrix = np.diag([-0.2, -0.3, 1.0, 1.0])
    asStored = fake.util.addVolumeFromArray(x2ctPixels[None] * 4095, ijkToRAS=matrix, name="as stored")
    reversed_ = fake.util.addVolumeFromArray(x2ctPixels[::-1][None] * 4095, ijkToRAS=matrix, name="reversed")

    for node, expectedPeak in ((asStored, (0, 10, 50)), (reversed_, (0, rows - 1 - 10, 50))):
        volume = logic.addRadiographHeatMap(heatMap, node, x2ctPixels, "map")
        voxels = fake.util.arrayFromVolume(volume)
        assert np.unravel_index(int(np.argmax(voxels)), voxels.shape) == expectedPeak
        np.testing.assert_allclose(fake.util.arrayFromVTKMatrix(_matrix(volume)), matrix)


@needs_mrml
def test_radiograph_heat_map_keeps_the_parent_transform_and_rejects_other_sizes(recon):
    module, fake = recon
    logic = _logic(module)
    pixels = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    node = fake.util.addVolumeFromArray(pixels[None], name="radiograph")
    transform = fake.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "detector placement")
    node.SetAndObserveTransformNodeID(transform.GetID())
    volume = logic.addRadiographHeatMap(np.ones((40, 50), np.float32), node, pixels, "map")
    assert volume.GetTransformNodeID() == transform.GetID()
    with pytest.raises(ValueError, match="does not match"):
        logic.addRadiographHeatMap(np.ones((40, 51), np.float32), node, pixels, "map")
    with pytest.raises(ValueError, match="holds"):
        logic.addRadiographHeatMap(np.ones((50, 40), np.float32), node, pixels.T.copy(), "map")


@needs_mrml
def test_unplaceable_radiograph_heat_map_becomes_a_warning(recon, tmp_path):
    module, fake = recon
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", showResult=False)
    prediction = selftest.addStandInClassifierOutputs(results.prediction)
    from x2ct.views import PA

    prediction.heat_maps.radiographs[PA]["nodule_present"] = np.zeros((8, 8), np.float32)
    results = logic.showPrediction(prediction, pa, lateral, showResult=False)
    assert "nodule_present" not in results.heatMaps["pa"] and "tb_present" in results.heatMaps["pa"]
    assert any("Grad-CAM nodule_present on pa not shown" in warning for warning in results.warnings)


# --- user errors, dependencies ------------------------------------------------------------------------------


@needs_mrml
def test_file_lookup_errors_are_one_line_input_errors(recon, tmp_path):
    module, fake = recon
    from x2ct.errors import InputError

    logic = _logic(module)
    with pytest.raises(InputError, match="not loaded from a file"):
        logic.process(fake.util.addVolumeFromArray(np.zeros((1, 40, 40), np.uint8), name="made in memory"))
    moved = slicer_shim.volumeFromFile(fake, str(tmp_path / "moved away.nrrd"), "moved")
    with pytest.raises(InputError, match="moved away.nrrd") as error:
        logic.process(moved, device="cpu")
    assert logic.errorMessage(error.value) == str(error.value) and "\n" not in str(error.value)

    dicomNode = slicer_shim.volumeFromFile(fake, None, "from DICOM")
    dicomNode.SetAttribute("DICOM.instanceUIDs", "1.2.826.0.1.3 1.2.826.0.1.4")
    fake.dicomDatabase.files["1.2.826.0.1.3"] = str(tmp_path / "x.dcm")
    assert logic.radiographFilePath(dicomNode) == str(tmp_path / "x.dcm")
    del fake.dicomDatabase.files["1.2.826.0.1.3"]
    with pytest.raises(InputError, match="DICOM database"):
        logic.radiographFilePath(dicomNode)


@needs_mrml
def test_pipeline_errors_reach_the_callback_as_one_message(recon, tmp_path):
    module, fake = recon
    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    outcome = {}
    logic.process(pa, lateral, modelName="x2ct-demo-singleview", device="cpu", waitForCompletion=False,
                  completedCallback=lambda results, error: outcome.update(results=results, error=error))
    assert slicer_shim.runEventLoop(lambda: "error" in outcome)
    assert outcome["results"] is None
    message = logic.errorMessage(outcome["error"])
    assert "single-view" in message and "\n" not in message and "Traceback" not in message


@needs_mrml
def test_unexpected_errors_log_the_trace_and_show_one_line(recon, caplog):
    module, _ = recon
    logic = _logic(module)
    try:
        raise KeyError("boom")
    except KeyError as err:
        error = err
    message = logic.errorMessage(error)
    assert message.startswith("X2CT Recon failed: KeyError") and "\n" not in message
    assert "Traceback" in caplog.text or any(record.exc_info for record in caplog.records)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "Choose CPU" in logic.errorMessage(oom)


class _FakeTorchLogic:
    installed = False
    installResult = None
    calls: List[dict] = []

    def torchInstalled(self):
        return self.installed

    def installTorch(self, **kwargs):
        _FakeTorchLogic.calls.append(kwargs)
        return self.installResult


@needs_mrml
def test_torch_comes_from_the_pytorch_extension(recon, monkeypatch):
    module, _ = recon
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails like a missing extension
    with pytest.raises(module.X2CTReconLib.DependencyError, match="Extensions Manager"):
        module.X2CTReconLogic().checkDependencies(requireTorch=True)

    fake = types.ModuleType("PyTorchUtils")
    fake.PyTorchUtilsLogic = _FakeTorchLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", fake)
    monkeypatch.setattr(_FakeTorchLogic, "calls", [])
    with pytest.raises(module.X2CTReconLib.DependencyError, match="PyTorch"):
        module.X2CTReconLogic().checkDependencies(requireTorch=True)  # the user declined the install
    assert _FakeTorchLogic.calls == [{"askConfirmation": True, "torchVersionRequirement": ">=2.1"}]
    with pytest.raises(module.X2CTReconLib.DependencyError, match="not installed"):
        module.X2CTReconLogic().checkDependencies(requireTorch=True, allowInstall=False)
    assert len(_FakeTorchLogic.calls) == 1  # batch mode never installs

    monkeypatch.setattr(_FakeTorchLogic, "installed", True)
    module.X2CTReconLogic().checkDependencies(requireTorch=True)  # torch present: nothing to install
    assert len(_FakeTorchLogic.calls) == 1


@needs_mrml
@pytest.mark.parametrize("version", [(5, 8), (5, 12)])
def test_missing_packages_installed_after_consent_with_everything_else_pinned(monkeypatch, tmp_path, version):
    """Real slicer.util dialogs (ctkMessageBox) and pip_install; the shim answers and records them."""
    module, fake = _import_module(monkeypatch, tmp_path, major=version[0], minor=version[1])
    from X2CTReconLib import dependencies

    absent = {"pylibjpeg-rle", "h5py-not-installed"}
    real = dependencies.installedVersion
    monkeypatch.setattr(dependencies, "installedVersion", lambda name: None if name in absent else real(name))
    monkeypatch.setattr(dependencies, "readRequirements", lambda path: ["numpy>=1.22", "h5py-not-installed>=3.6"])

    slicer_shim.answers["confirm"] = False
    with pytest.raises(module.X2CTReconLib.DependencyError, match="cannot run without"):
        module.X2CTReconLogic().checkDependencies(requireTorch=False)
    assert [c["function"] for c in slicer_shim.calls] == ["messageBox"]
    assert "h5py-not-installed>=3.6" in slicer_shim.calls[0]["text"]

    slicer_shim.calls.clear()
    with pytest.raises(module.X2CTReconLib.DependencyError, match="Open X2CT Recon in the Slicer window"):
        module.X2CTReconLogic().checkDependencies(requireTorch=False, allowInstall=False)
    assert slicer_shim.calls == []

    slicer_shim.answers["confirm"] = True
    module.X2CTReconLogic().checkDependencies(requireTorch=False)
    pip = [c for c in slicer_shim.calls if c["function"] == "pip_install"]
    assert len(pip) == 1
    if version >= (5, 11):
        assert pip[0]["requirements"] == ["h5py-not-installed>=3.6"] and pip[0]["requester"] == "X2CT Recon"
        constraints = pip[0]["constraints"]
    else:
        assert pip[0]["requirements"][0] == "-c" and pip[0]["requirements"][2:] == ["h5py-not-installed>=3.6"]
        constraints = pip[0]["requirements"][1]
    assert Path(constraints).is_relative_to(tmp_path)  # slicer.util.tempDirectory under slicer.app.temporaryPath
    pins = Path(constraints).read_text().splitlines()
    assert f"numpy=={real('numpy')}" in pins and f"pydicom=={real('pydicom')}" in pins


# --- saving, exporting, batch -------------------------------------------------------------------------------


@needs_mrml
def test_save_nrrd_findings_csv_and_dicom_export(recon, tmp_path):
    module, fake = recon
    from X2CTReconLib import selftest

    logic = _logic(module)
    pa, lateral = _samples(fake, tmp_path)
    results = logic.process(pa, lateral, device="cpu", showResult=False)
    selftest.addStandInClassifierOutputs(results.prediction)

    nrrd = logic.saveSyntheticCT(results, str(tmp_path / "ct.nrrd"))  # the CT node's own storage node writes it
    saved, expected = sitk.ReadImage(nrrd), results.prediction.image()
    np.testing.assert_allclose(saved.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(saved.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(expected))

    with open(logic.saveFindingsCSV(results, str(tmp_path / "findings.csv")), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["output"] for row in rows] == [f.output for f in results.prediction.findings]
    assert float(rows[1]["probability"]) == results.prediction.findings[1].probability

    folder = Path(logic.exportToDicomDatabase(results))
    imports = [c for c in slicer_shim.calls if c["function"] == "importDicom"]
    assert imports == [{"function": "importDicom", "folder": str(folder / "dicom"), "copyFiles": True}]
    import pydicom

    first = pydicom.dcmread(sorted((folder / "dicom").iterdir())[0], stop_before_pixels=True)
    assert first.SeriesDescription.startswith("SYNTHETIC") and first.get("SyntheticData") == "YES"
    fake.dicomDatabase.isOpen = False
    with pytest.raises(module.X2CTReconLib.DependencyError, match="DICOM database is not open"):
        logic.exportToDicomDatabase(results)


@needs_mrml
def test_style_and_samples_give_an_sd_heat_map_layer_on_the_cts_grid(recon_gui, tmp_path):
    """A stochastic model with a style model: the SD volume lies voxel for voxel on the CT, is the slice views'
    foreground, uses the heat colours over 0..its 99th percentile (HU), and the run is described in the text."""
    module, fake = recon_gui
    from test_pipeline_options import save_tiny_diffusion, save_tiny_style

    logic = _logic(module)
    pa, _ = _samples(fake, tmp_path)
    diffusion, style = save_tiny_diffusion(tmp_path / "diffusion"), save_tiny_style(tmp_path / "style")
    from x2ct.inference.ood import OODReference, ViewReference, image_features, reference_path
    from x2ct.views import PA

    noise = np.random.default_rng(0).random((3, 64, 64))  # a made-up training domain: every radiograph is far from it
    reference = OODReference({PA: ViewReference.fit(np.stack([image_features(x) for x in noise]))}, 64, threshold=1.0)
    reference.write(reference_path(diffusion))
    results = logic.process(pa, None, modelName=str(diffusion), device="cpu", style=str(style), samples=2,
                            guidance=0.0, waitForCompletion=True)
    prediction = results.prediction
    sd = results.uncertaintyVolume
    assert prediction.style.name == "tiny-style" and prediction.sampling.samples == 2
    assert prediction.ood.flagged and results.outOfDistribution
    assert results.oodText().startswith(f"Out-of-distribution score {prediction.ood.score:.3f} (threshold 1.000")
    assert "OUT OF DISTRIBUTION" in results.oodText()
    assert "Inputs translated to DRR style by tiny-style" in results.consistencyText()
    assert "Mean of 2 samples" in results.consistencyText()
    assert fake.util.arrayFromVolume(sd).tolist() == prediction.uncertainty_sd_hu.tolist()
    assert sd.GetAttribute("X2CT.Units") == "HU" and sd.GetAttribute("X2CT.Synthetic").startswith("SYNTHETIC")
    sdMatrix, ctMatrix = _matrix(sd), _matrix(results.ctVolume)
    assert [sdMatrix.GetElement(r, c) for r in range(4) for c in range(4)] == \
        [ctMatrix.GetElement(r, c) for r in range(4) for c in range(4)]
    assert results.heatMapOutputs[0] == module.UNCERTAINTY_OUTPUT and "SD over 2 samples" in results.findingLabel(
        module.UNCERTAINTY_OUTPUT)
    display = sd.GetScalarVolumeDisplayNode()
    top = float(np.percentile(prediction.uncertainty_sd_hu, module.UNCERTAINTY_SCALE_PERCENTILE))
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, top), rel=1e-4)
    assert display.GetColorNodeID() == module.HEAT_MAP_COLOR_NODE_ID and display.GetApplyThreshold()
    assert [c.GetForegroundVolumeID() for c in _compositeNodes(fake)] == [sd.GetID()] * 3
    assert [c.GetBackgroundVolumeID() for c in _compositeNodes(fake)] == [results.ctVolume.GetID()] * 3
    logic.setHeatMapThreshold(results, 0.5)
    assert display.GetLowerThreshold() == pytest.approx(0.5 * top, rel=1e-4)
    logic.showSliceLayers(results, "pa", module.UNCERTAINTY_OUTPUT)  # no SD map over a radiograph
    assert [c.GetForegroundVolumeID() for c in _compositeNodes(fake)] == [None] * 3
    with pytest.raises(logic.userErrorTypes(), match="deterministic"):
        logic.process(pa, None, device="cpu", samples=4, waitForCompletion=True)


def _install_torch_extension(monkeypatch):
    fake = types.ModuleType("PyTorchUtils")
    fake.PyTorchUtilsLogic = type("PyTorchUtilsLogic", (), {"torchInstalled": lambda self: True})
    monkeypatch.setitem(sys.modules, "PyTorchUtils", fake)


@needs_mrml
def test_batch_script_writes_what_x2ct_predict_writes(recon, tmp_path, monkeypatch, capsys):
    """A DICOM PA and an MHA lateral, read by Slicer's readers (vtkITK) in the batch and by x2ct for reference."""
    module, fake = recon
    _install_torch_extension(monkeypatch)
    import x2ct_batch

    from radiograph_factory import write_dx
    from x2ct.inference import predict_to_folder

    pa = write_dx(tmp_path / "pa.dcm", view_position="PA")
    _, lateral = _sampleFiles(tmp_path)
    out = tmp_path / "batch"
    assert x2ct_batch.run(["--pa", str(pa), "--lateral", str(lateral), "-o", str(out), "--device", "cpu"]) == 0
    reference = predict_to_folder(tmp_path / "cli", pa, lateral, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == reference.model.name and summary["synthetic"].startswith("SYNTHETIC")
    assert summary["consistency"]["score"] == reference.consistency_score
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "synthetic_ct.nrrd"))),
                                  sitk.GetArrayFromImage(reference.image()))
    assert "wrote" in capsys.readouterr().out
    volumes = [fake.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(fake.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert {v.GetStorageNode().GetFileName() for v in volumes if v.GetStorageNode()} == {str(pa), str(lateral)}
    assert fake.app.applicationLogic().GetSelectionNode().GetActiveVolumeID() is None  # loaded with show off


@needs_mrml
def test_batch_script_passes_style_samples_and_guidance(recon, tmp_path, monkeypatch, capsys):
    module, fake = recon
    _install_torch_extension(monkeypatch)
    import x2ct_batch

    from test_pipeline_options import save_tiny_diffusion, save_tiny_style

    pa, _ = _sampleFiles(tmp_path)
    diffusion, style = save_tiny_diffusion(tmp_path / "diffusion"), save_tiny_style(tmp_path / "style")
    out = tmp_path / "batch"
    assert x2ct_batch.run(["--pa", str(pa), "-o", str(out), "--device", "cpu", "--model", str(diffusion),
                           "--style", str(style), "--samples", "2", "--guidance", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["style"]["name"] == "tiny-style"
    assert (summary["sampling"]["samples"], summary["sampling"]["guidance"]) == (2, 0.5)
    assert (out / "uncertainty_sd_hu.nrrd").is_file()
    assert x2ct_batch.run(["--pa", str(pa), "-o", str(tmp_path / "bad"), "--style", str(tmp_path / "none")]) == 2
    assert "no such style model" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@needs_mrml
def test_batch_script_exit_codes(recon, tmp_path, monkeypatch, capsys):
    module, fake = recon
    _install_torch_extension(monkeypatch)
    import x2ct_batch

    pa, _ = _sampleFiles(tmp_path)
    assert x2ct_batch.run(["--pa", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "a")]) == 2
    assert "missing.nrrd: file not found" in capsys.readouterr().err
    unreadable = tmp_path / "notes.nrrd"
    unreadable.write_text("not an image")
    assert x2ct_batch.run(["--pa", str(unreadable), "-o", str(tmp_path / "a")]) == 2
    assert "notes.nrrd: Slicer could not load this file as an image" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert x2ct_batch.run(["--pa", str(pa), "-o", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "notes.txt").read_text() == "keep me"
    monkeypatch.setattr(module.X2CTReconLogic, "runPipeline", lambda *a, **k: 1 / 0)
    assert x2ct_batch.run(["--pa", str(pa), "-o", str(tmp_path / "b"), "--device", "cpu"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    assert x2ct_batch.run(["--pa", str(pa), "-o", str(tmp_path / "c")]) == 2
    assert "PyTorch extension" in capsys.readouterr().err


# --- X2CTReconLib helpers, without Slicer --------------------------------------------------------------


@pytest.fixture()
def lib(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(MODULE_DIR), *sys.path])
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import X2CTReconLib.background
    import X2CTReconLib.dependencies
    import X2CTReconLib.results

    yield X2CTReconLib
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)


def test_background_task_hands_over_progress_result_and_errors(lib):
    import threading

    release = threading.Event()

    def work(progress, cancel):
        progress(0.25, "a")
        release.wait(5)
        progress(0.5, "b")
        if cancel():
            raise RuntimeError("stopped")
        return 42

    task = lib.background.BackgroundTask(work)
    task.start()
    assert not task.done
    with pytest.raises(RuntimeError, match="not finished"):
        task.outcome()
    release.set()
    assert task.wait(5)
    assert task.poll() == [(0.25, "a"), (0.5, "b")] and task.poll() == []
    assert task.outcome() == (42, None)

    release.clear()
    task = lib.background.BackgroundTask(work)
    task.start()
    task.cancel()
    release.set()
    assert task.wait(5) and task.cancelRequested
    result, error = task.outcome()
    assert result is None and str(error) == "stopped"


def test_findings_rows_csv_and_consistency_text(lib):
    from dataclasses import replace

    from x2ct.inference import Finding, RadiographPeak, VolumePeak

    results = lib.results
    finding = Finding(
        task="tb", output="tb_present", label="TB present", probability=0.123456, threshold=0.5, call="negative",
        model="tiny", weights_sha256=None, inputs=["PA radiograph", "synthetic CT"], ct_source=None, notes=[],
        guided_peak={},
    )
    row = results.findingsRows([finding])[0]
    column = {name: index for index, name in enumerate(results.FINDINGS_COLUMNS)}
    assert row[column["probability"]] == "0.1235"
    assert row[column["inputs"]] == '["PA radiograph", "synthetic CT"]'
    assert row[column["weights_sha256"]] == row[column["ct_source"]] == ""  # None leaves the cell empty
    assert row[column["guided_peak"]] == ""
    peaks = {
        "ct": VolumePeak(lps_mm=(-12.5, None, 40.0), ras_mm=(12.5, None, 40.0), note="two-slice model"),
        "pa": RadiographPeak(pixel_rc=(5.5, 125.25)),
        "lateral": None,
    }
    with_peaks = results.findingsRows([replace(finding, guided_peak=peaks)])[0][column["guided_peak"]]
    assert with_peaks == "CT: R 12.5, A ?, S 40.0 mm; PA: row 5.5, column 125.2; lateral: none"
    parsed = list(csv.DictReader(results.findingsCsvText([finding]).splitlines()))
    assert float(parsed[0]["probability"]) == 0.123456 and parsed[0]["label"] == "TB present"
    text = results.consistencyText({"PA": {"ncc": 0.91234, "ssim": 0.5}, "LATERAL": {"ncc": 0.8, "ssim": 0.7}}, 0.856)
    assert text.splitlines() == [
        "PA: NCC 0.912, SSIM 0.500",
        "LATERAL: NCC 0.800, SSIM 0.700",
        "mean NCC 0.856 (agreement of the CT's re-projection with the input; not accuracy)",
    ]


def test_radiograph_orientation_detects_reversed_rows_and_columns(lib):
    results = lib.results
    rng = np.random.default_rng(3)
    pixels = rng.random((40, 30)).astype(np.float32)
    assert results.radiographOrientation(pixels * 100 + 7, pixels) == "as stored"
    assert results.radiographOrientation(1 - pixels, pixels) == "as stored"  # inverted (MONOCHROME1) still matches
    assert results.radiographOrientation(pixels[::-1], pixels) == "rows reversed"
    assert results.radiographOrientation(pixels[:, ::-1], pixels) == "columns reversed"
    flat = np.ones((40, 30), np.float32)
    assert results.radiographOrientation(flat, flat) == "as stored"  # no evidence: keep the stored order
    heat = np.zeros((40, 30), np.float32)
    heat[2, 3] = 1
    voxels = results.radiographHeatMapVoxels(heat, pixels[:, ::-1], pixels)
    assert voxels.shape == (1, 40, 30) and voxels[0, 2, 30 - 1 - 3] == 1


def test_model_cards_become_tooltips(lib, tmp_path):
    from x2ct.models.checkpoints import bundled_model_names, models_dir

    names = bundled_model_names()
    assert names
    tip = lib.results.modelCardTooltip(models_dir(), names[0])
    assert names[0] in tip and "SYNTHETIC" in tip and "**" not in tip
    assert "no model card" in lib.results.modelCardTooltip(tmp_path, "missing")
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "MODEL_CARD.md").write_text("x" * 5000)
    assert len(lib.results.modelCardTooltip(tmp_path, "long", maxCharacters=100)) <= 102


def test_ood_and_run_texts(lib):
    from types import SimpleNamespace

    from x2ct.inference.types import SamplingRecord, StyleRecord

    results = lib.results
    flagged = SimpleNamespace(score=0.91, threshold=0.4, flagged=True, per_view={"PA": 0.91})
    assert results.oodText(flagged) == ("Out-of-distribution score 0.910 (threshold 0.400; PA 0.910): OUT OF "
                                        "DISTRIBUTION: the inputs are unlike the model's training radiographs; treat "
                                        "the CT with caution")
    inside = SimpleNamespace(score=0.1, threshold=None, flagged=False, per_view={})
    assert results.oodText(inside).endswith("(no calibrated threshold; ): within the training domain")
    assert results.oodText(None) == "" and results.runText(None, None) == ""
    text = results.runText(StyleRecord("demo", "/s", "ab" * 32), SamplingRecord(8, "ddim", 20, 0.0, 0))
    assert text.splitlines() == [
        "Inputs translated to DRR style by demo (sha256 abababababab…)",
        "Mean of 8 samples (ddim, steps 20, guidance 0, seed 0); the SD over them is the uncertainty layer",
    ]


def test_requirement_checks_never_upgrade_present_packages(lib):
    dependencies = lib.dependencies
    versions = {"numpy": "1.21.0", "pydicom": "2.4.4", "Pillow": "11.0"}
    missing, notes = dependencies.checkRequirements(
        ["numpy>=1.22", "pydicom>=2.4,<4", "Pillow>=10.1", "scikit-image>=0.19"], versions.get
    )
    assert missing == ["scikit-image>=0.19"]
    assert notes == ["numpy 1.21.0 is older than 1.22 but is kept (it ships with Slicer)"]
    assert dependencies.requirementName("scikit_image>=0.19") == "scikit-image"
    assert dependencies.requirementName("Pillow>=10", normalize=False) == "Pillow"
    assert dependencies.constraintsText({"b": "2", "a": "1.0"}) == "a==1.0\nb==2\n"
    assert dependencies.pipInstallCall((5, 10), ["x>=1"], "/c.txt", "me") == ([["-c", "/c.txt", "x>=1"]], {})
    assert dependencies.pipInstallCall((5, 12), ["x>=1"], "/c.txt", "me") == (
        [["x>=1"]], {"constraints": "/c.txt", "requester": "me"})
