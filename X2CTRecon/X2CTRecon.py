"""X2CTRecon: synthetic 3D chest CT from chest radiographs. Research use only; not for diagnosis.

GUI and MRML glue only. Everything else (reading radiographs, geometry, models) is done by the
headless ``x2ct`` package, which ships with this module (see X2CTReconLib.addBundledX2CTToPath).
The code must run on Slicer 5.8 (Python 3.9): use typing.Optional, never ``X | None``. There is
deliberately no ``from __future__ import annotations``: @parameterNodeWrapper reads the annotations.
"""

import logging
import os
from typing import Annotated, List, Optional, Tuple

import slicer
import vtk
import X2CTReconLib
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SYNTHETIC_BANNER = "SYNTHETIC — research use only"

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_LABELS = {"auto": "Automatic (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}

MINIMUM_TORCH_VERSION = "2.1"  # the x2ct package requires torch>=2.1 (X2CTTraining/pyproject.toml)


#
# X2CTRecon
#


class X2CTRecon(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("X2CT Recon")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerX2CT contributors"]
        self.parent.helpText = _("""
Builds a <b>synthetic</b> 3D chest CT from a frontal (PA) chest radiograph and, optionally, a lateral one.
<b>Research use only — not for diagnosis.</b> Every output is labelled SYNTHETIC.
<p>At this stage the module reads the selected radiographs and reports their view, pixel spacing, size,
body part and any warnings. Radiographs may come from the DICOM database or from PNG/JPEG/DICOM/NRRD files.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, SimpleITK, pydicom and PyTorch (through the SlicerPyTorch extension).
The reconstruction follows the X2CT-GAN family of published methods.
""")


#
# X2CTReconParameterNode
#


@parameterNodeWrapper
class X2CTReconParameterNode:
    """
    The parameters of the module (saved with the scene).

    paVolume - frontal (PA) chest radiograph.
    lateralVolume - optional lateral chest radiograph.
    device - "auto" (GPU if available), "cpu" or "cuda".
    """

    paVolume: vtkMRMLScalarVolumeNode
    lateralVolume: Optional[vtkMRMLScalarVolumeNode]
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


#
# X2CTReconWidget
#


class X2CTReconWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/X2CTRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.bannerLabel.text = SYNTHETIC_BANNER
        # Reserved for the reconstruction run (next milestone); hidden until then.
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False

        self.logic = X2CTReconLogic()

        # Keep the parameter node valid when the scene is closed.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.paVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.paVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[X2CTReconParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" property in the .ui are bound to parameters.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._labelDeviceChoices()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _labelDeviceChoices(self) -> None:
        """Readable labels for the device combo box (the binding fills it with the raw choices)."""
        for index, choice in enumerate(DEVICE_CHOICES):
            if index < self.ui.deviceComboBox.count:
                self.ui.deviceComboBox.setItemText(index, DEVICE_LABELS[choice])

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if not parameters or not parameters.paVolume:
            self.ui.applyButton.toolTip = _("Select a frontal (PA) radiograph")
            self.ui.applyButton.enabled = False
        elif parameters.lateralVolume is not None and parameters.lateralVolume == parameters.paVolume:
            self.ui.applyButton.toolTip = _("The frontal and the lateral inputs must be different radiographs")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Read the selected radiographs and report what was found")
            self.ui.applyButton.enabled = True

    def onApplyButton(self) -> None:
        """Inspect the selected radiographs (the reconstruction itself comes in a later milestone)."""
        self.ui.resultsLabel.text = ""
        selected = [(self._parameterNode.paVolume, "PA"), (self._parameterNode.lateralVolume, "LATERAL")]
        with slicer.util.tryWithErrorDisplay(_("Failed to inspect the radiographs."), waitCursor=False):
            try:
                reports = []
                with slicer.util.WaitCursor():
                    self.logic.checkDependencies(requireTorch=False)
                    for volumeNode, view in selected:
                        if volumeNode:
                            radiograph = self.logic.inspectSelectedRadiograph(volumeNode, view)
                            reports.append(self.logic.describeRadiograph(volumeNode.GetName(), radiograph))
            except self.logic.userErrorTypes() as err:
                # A problem the user can fix (bad file, wrong view, missing package): one message, no traceback.
                self.ui.resultsLabel.text = str(err)
                slicer.util.errorDisplay(str(err), windowTitle=_("X2CT Recon"))
                return
            self.ui.resultsLabel.text = "\n\n".join(reports)


#
# X2CTReconLogic
#


class X2CTReconLogic(ScriptedLoadableModuleLogic):
    """All computation of the module; usable without the GUI (batch scripts, tests).

    It delegates everything that is not MRML to the ``x2ct`` package.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        X2CTReconLib.addBundledX2CTToPath()

    def getParameterNode(self):
        return X2CTReconParameterNode(super().getParameterNode())

    # Dependencies

    def checkDependencies(self, requireTorch: bool = True, askConfirmation: bool = True) -> None:
        """Make sure PyTorch (if required) and the ``x2ct`` package can be imported.

        PyTorch is installed through the PyTorch extension (PyTorchUtils), after asking the user when
        ``askConfirmation`` is True. Nothing else is installed or upgraded here: in particular Slicer's
        own pydicom is never replaced. Raises X2CTReconLib.DependencyError with one clear message.
        """
        if requireTorch:
            try:
                import PyTorchUtils
            except ModuleNotFoundError as err:
                raise X2CTReconLib.DependencyError(
                    "X2CT Recon needs the PyTorch extension. "
                    "Install 'PyTorch' from the Extensions Manager and restart Slicer."
                ) from err
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(
                    askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}"
                )
                if torch is None:
                    raise X2CTReconLib.DependencyError(
                        "X2CT Recon needs PyTorch, which was not installed. Install it in the PyTorch Utils module."
                    )

        if X2CTReconLib.addBundledX2CTToPath() is None:
            logging.info("X2CTRecon: no bundled x2ct package found; using the one installed in Slicer's Python")
        try:
            import x2ct.errors  # noqa: F401
            import x2ct.geometry  # noqa: F401
            import x2ct.io.radiograph  # noqa: F401
        except ImportError as err:
            missing = getattr(err, "name", None) or str(err)
            raise X2CTReconLib.DependencyError(
                f"X2CT Recon could not load its x2ct package: Python module '{missing}' is missing or unusable. "
                "Reinstall the SlicerX2CT extension; see the README for the list of required packages."
            ) from err

    @staticmethod
    def userErrorTypes() -> Tuple[type, ...]:
        """Exception types a user can cause; they are shown as one message, without a traceback."""
        try:
            from x2ct.errors import InputError
        except ImportError:
            return (X2CTReconLib.DependencyError,)
        return (X2CTReconLib.DependencyError, InputError)

    # Radiographs

    def radiographFilePath(self, volumeNode: vtkMRMLScalarVolumeNode) -> str:
        """The file a radiograph volume node was loaded from: its DICOM instance or its storage file."""
        from x2ct.errors import InputError

        if volumeNode is None:
            raise InputError(None, "no radiograph selected")
        instanceUIDs = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        if instanceUIDs:
            database = getattr(slicer, "dicomDatabase", None)
            filePath = database.fileForInstance(instanceUIDs[0]) if database else ""
            if not filePath:
                problem = "its DICOM file is no longer in the DICOM database; load it again"
                raise InputError(volumeNode.GetName(), problem)
            return filePath
        storageNode = volumeNode.GetStorageNode()
        filePath = storageNode.GetFileName() if storageNode else None
        if not filePath:
            problem = "this volume was not loaded from a file; load the radiograph from DICOM or an image file"
            raise InputError(volumeNode.GetName(), problem)
        return filePath

    def inspectRadiograph(self, volumeNode: vtkMRMLScalarVolumeNode, view: Optional[str] = None):
        """Read the file behind ``volumeNode`` with ``x2ct`` and return its ``Radiograph``.

        ``view`` ("PA", "AP", "LATERAL" or None to infer it) is passed to the reader, which reports a
        mismatch or an unusable file as ``x2ct.errors.InputError``.
        """
        from x2ct.io.radiograph import read_radiograph

        filePath = self.radiographFilePath(volumeNode)
        logging.info(f"X2CTRecon: reading radiograph {filePath} (view {view or 'inferred'})")
        return read_radiograph(filePath, view=view)

    def inspectSelectedRadiograph(self, volumeNode: vtkMRMLScalarVolumeNode, expectedView: str):
        """Read a radiograph chosen as the frontal ("PA") or the lateral ("LATERAL") input.

        The view recorded in the file wins (an AP file stays AP); a file that records no view (PNG,
        JPEG, NRRD) is taken to be ``expectedView``. A lateral file chosen as the frontal input, or
        the reverse, is a user error.
        """
        from x2ct import views
        from x2ct.errors import InputError

        radiograph = self.inspectRadiograph(volumeNode, None)
        if radiograph.view is None:
            return self.inspectRadiograph(volumeNode, expectedView)
        if (radiograph.view in views.FRONTAL_VIEWS) != (expectedView in views.FRONTAL_VIEWS):
            problem = f"the file is a {radiograph.view} radiograph but was selected as the {expectedView} input"
            raise InputError(self.radiographFilePath(volumeNode), problem)
        return radiograph

    @staticmethod
    def describeRadiograph(title: str, radiograph) -> str:
        """A few plain-text lines about a radiograph for the results panel or a batch log."""
        rows, columns = radiograph.pixels.shape[:2]
        spacing = radiograph.spacing_mm
        if spacing is None:
            spacingText = "unknown (the file has no pixel spacing)"
        elif isinstance(spacing, (tuple, list)):
            spacingText = " × ".join(f"{float(value):.3g}" for value in spacing) + " mm"
        else:
            spacingText = f"{float(spacing):.3g} mm"
        metadata = radiograph.metadata or {}
        bodyPart = metadata.get("body_part") or "not recorded"
        viewSource = metadata.get("view_source")
        viewSource = "as selected" if viewSource == "argument" else viewSource
        lines = [
            f"{title}",
            f"  view: {radiograph.view or 'unknown'}" + (f" ({viewSource})" if viewSource else ""),
            f"  size: {columns} × {rows} pixels (columns × rows)",
            f"  pixel spacing: {spacingText}",
            f"  body part: {bodyPart}",
        ]
        warnings: List[str] = list(radiograph.warnings or [])
        lines += [f"  warning: {warning}" for warning in warnings] or ["  no warnings"]
        return "\n".join(lines)

    # Volumes

    def addVolumeFromImage(self, image, name: str) -> vtkMRMLScalarVolumeNode:
        """Add a scalar volume node holding a SimpleITK image, placed correctly in RAS.

        SimpleITK's origin, spacing and direction are LPS; X2CTReconLib converts them to Slicer's IJKToRAS.
        """
        return slicer.util.addVolumeFromArray(
            X2CTReconLib.voxelArrayFromImage(image), ijkToRAS=X2CTReconLib.ijkToRASFromImage(image), name=name
        )


#
# X2CTReconTest
#


class X2CTReconTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer ("Reload and Test" or ctest). They need no network and no GPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_InspectRadiographFromFile()
        self.setUp()
        self.test_VolumeWithoutFileIsUserError()
        self.setUp()
        self.test_AddVolumeFromImageGeometry()

    def test_InspectRadiographFromFile(self):
        self.delayDisplay("Inspecting a synthetic radiograph file")
        import shutil

        import numpy as np
        import SimpleITK as sitk

        logic = X2CTReconLogic()
        logic.checkDependencies(requireTorch=False)

        # A chest-like test pattern: bright body, two darker lungs, a bright spine. Rows != columns.
        rows, columns = 240, 200
        y, x = np.mgrid[0:rows, 0:columns]
        pixels = np.full((rows, columns), 170, np.uint8)
        for centerX in (0.3 * columns, 0.7 * columns):
            lung = ((x - centerX) / (0.16 * columns)) ** 2 + ((y - 0.5 * rows) / (0.33 * rows)) ** 2 < 1
            pixels[lung] = 60
        pixels[:, int(0.47 * columns):int(0.53 * columns)] = 230

        folder = slicer.util.tempDirectory("X2CTReconTest")
        try:
            filePath = os.path.join(folder, "synthetic_pa.png")
            sitk.WriteImage(sitk.GetImageFromArray(pixels), filePath)
            volumeNode = slicer.util.loadVolume(filePath, {"singleFile": True})

            radiograph = logic.inspectRadiograph(volumeNode, "PA")
            self.assertEqual(radiograph.view, "PA")
            self.assertEqual(tuple(radiograph.pixels.shape), (rows, columns))
            self.assertGreaterEqual(float(radiograph.pixels.min()), 0.0)
            self.assertLessEqual(float(radiograph.pixels.max()), 1.0)
            self.assertIn("view: PA", logic.describeRadiograph(volumeNode.GetName(), radiograph))

            # A PNG records no view: the input it was selected for decides.
            self.assertEqual(logic.inspectSelectedRadiograph(volumeNode, "LATERAL").view, "LATERAL")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")

    def test_VolumeWithoutFileIsUserError(self):
        import numpy as np

        logic = X2CTReconLogic()
        logic.checkDependencies(requireTorch=False)
        volumeNode = slicer.util.addVolumeFromArray(np.zeros((1, 8, 8), np.uint8), name="not from a file")
        with self.assertRaises(logic.userErrorTypes()):
            logic.inspectRadiograph(volumeNode, "PA")

    def test_AddVolumeFromImageGeometry(self):
        self.delayDisplay("Placing a canonical-grid image in RAS")
        import numpy as np

        logic = X2CTReconLogic()
        logic.checkDependencies(requireTorch=False)
        from x2ct.geometry import CanonicalGrid

        grid = CanonicalGrid(size=64)
        voxels = np.zeros(grid.shape_dhw, np.float32)
        voxels[0, 0, 0] = 1.0
        volumeNode = logic.addVolumeFromImage(grid.image_from_array(voxels), "SYNTHETIC geometry test")

        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(ijkToRAS), grid.ijk_to_ras(), atol=1e-6)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeNode), voxels)
        self.delayDisplay("Test passed")
