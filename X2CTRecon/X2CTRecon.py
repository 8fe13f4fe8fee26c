"""X2CTRecon: synthetic 3D chest CT from chest radiographs. Research use only; not for diagnosis.

GUI and MRML glue only. Everything else (reading radiographs, geometry, models, findings, heat maps)
is done by the headless ``x2ct`` package, which ships with this module (see
X2CTReconLib.addBundledX2CTToPath); its one inference pipeline is called in
X2CTReconLogic.runPipeline and nowhere else.
The code must run on Slicer 5.8 (Python 3.9): use typing.Optional, never ``X | None``. There is
deliberately no ``from __future__ import annotations``: @parameterNodeWrapper reads the annotations.
"""

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Tuple

import slicer
import vtk
import X2CTReconLib
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from X2CTReconLib import dependencies as X2CTDependencies
from X2CTReconLib import results as X2CTResults
from X2CTReconLib.background import BackgroundTask

SYNTHETIC_BANNER = "SYNTHETIC — research use only"

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_LABELS = {"auto": "Automatic (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}

MINIMUM_TORCH_VERSION = "2.1"  # the x2ct package requires torch>=2.1 (X2CTTraining/pyproject.toml)

REQUIREMENTS_FILE = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
"""x2ct's pip requirements besides torch (installed on first use, only when absent)."""

AUTOMATIC_MODEL = ""
"""Model choice meaning: the bundled default for the inputs (biplanar with a lateral, single-view without)."""

UNCERTAINTY_OUTPUT = "uncertainty_sd_hu"
"""The heat-map layer of a stochastic model's per-voxel SD over its samples (HU; over the CT only), listed with the
Grad-CAM outputs."""
UNCERTAINTY_SCALE_PERCENTILE = 99.0
"""The SD layer's colours run from 0 HU to this percentile of the map (as in x2ct's report.png)."""

HEAT_MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
"""Perceptual heat colour table (Base/Logic/Resources/ColorFiles/Inferno.txt; id rule in vtkMRMLColorLogic.h)."""
FALLBACK_HEAT_MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"

VOLUME_RENDERING_PRESET = "CT-Chest-Contrast-Enhanced"
"""Preset name in Modules/Loadable/VolumeRendering/Resources/presets.xml."""

CT_WINDOW_LEVEL_HU = (1500.0, -500.0)
"""Slice-view window and level (HU) of the synthetic CT: a chest window showing lungs and soft tissue."""

HEAT_MAP_SOURCES = ("ct", "pa", "lateral")
"""What a heat map can lie over, by x2ct input key (x2ct.views.CT_KEY, PA_KEY, LATERAL_KEY): the synthetic CT and
the two radiographs. ``X2CTReconResults.heatMaps`` and ``radiographVolumes`` use these keys."""
HEAT_MAP_SOURCE_LABELS = {"ct": "synthetic CT", "pa": "PA radiograph", "lateral": "lateral radiograph"}

POLL_INTERVAL_MSEC = 200
"""How often the GUI thread looks at a running reconstruction."""


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
<p>Choose the radiographs (from the DICOM database or PNG/JPEG/DICOM/NRRD files), a model and press
<i>Create synthetic CT</i>. The CT appears in the slice and 3D views with the re-projection consistency
scores, the out-of-distribution score, the classifiers' findings and Grad-CAM heat maps over the CT and the
radiographs. Clinical radiographs can first be translated to DRR style (CycleGAN). Stochastic (diffusion) models
are sampled several times: the CT is the mean and the per-voxel standard deviation (HU) is an uncertainty layer.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, SimpleITK, pydicom and PyTorch (through the SlicerPyTorch extension).
The reconstruction follows published methods: X2CT-GAN (Ying et al., CVPR 2019) and the
back-projection generators of XprospeCT.
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
    model - bundled model name, or "" for the default that fits the inputs.
    device - "auto" (GPU if available), "cpu" or "cuda".
    heatMapOpacity - opacity of the Grad-CAM layer in the slice views (0-1).
    heatMapThreshold - Grad-CAM values below this (0-1) are transparent.
    translateStyle - translate the radiographs to DRR style with the style model ``style`` first.
    style - bundled style model name (x2ct.inference.style.bundled_style_names).
    samples - stochastic models only: samples per reconstruction (mean CT + SD layer).
    guidance - stochastic models only: weight of the radiograph-consistency guidance (0 = none).
    """

    paVolume: vtkMRMLScalarVolumeNode
    lateralVolume: Optional[vtkMRMLScalarVolumeNode]
    model: str = AUTOMATIC_MODEL
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    heatMapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    heatMapThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.3
    translateStyle: bool = False
    style: str = ""
    samples: Annotated[int, WithinRange(1, 64)] = 8
    guidance: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0


#
# X2CTReconResults
#


class X2CTReconResults:
    """What one reconstruction put in the scene, with the ``x2ct`` prediction it came from.

    ctVolume - the synthetic CT (HU). findingsTable - one row per classifier output (finding).
    heatMaps - Grad-CAM volumes by source ("ct", "pa", "lateral") then finding output (e.g. "tb_present").
    radiographVolumes - the input nodes by source ("pa", "lateral").
    warnings - notes from the pipeline and from placing the heat maps.
    uncertaintyVolume - stochastic models: the per-voxel SD over the samples (HU, on the CT's grid), else None.
    """

    def __init__(self, prediction, ctVolume, findingsTable, heatMaps, radiographVolumes, warnings,
                 uncertaintyVolume=None) -> None:
        self.prediction = prediction
        self.ctVolume = ctVolume
        self.findingsTable = findingsTable
        self.heatMaps: Dict[str, Dict[str, vtkMRMLScalarVolumeNode]] = heatMaps
        self.radiographVolumes: Dict[str, vtkMRMLScalarVolumeNode] = radiographVolumes
        self.warnings: List[str] = warnings
        self.uncertaintyVolume: Optional[vtkMRMLScalarVolumeNode] = uncertaintyVolume

    @property
    def heatMapOutputs(self) -> List[str]:
        """The layers to choose from: the SD map first (stochastic models), then the Grad-CAM outputs."""
        uncertainty = [UNCERTAINTY_OUTPUT] if self.uncertaintyVolume is not None else []
        return uncertainty + sorted({output for maps in self.heatMaps.values() for output in maps})

    def findingLabel(self, output: str) -> str:
        """Readable name of a layer: a finding output's ``label`` (or the output itself), or the SD map's."""
        if output == UNCERTAINTY_OUTPUT:
            return f"Uncertainty: SD over {self.prediction.sampling.samples} samples (HU)"
        labels = {finding.output: finding.label for finding in self.prediction.findings}
        return labels.get(output) or output

    def consistencyText(self) -> str:
        """The re-projection scores, then the style and sampling of the run (X2CTReconLib.results)."""
        lines = [X2CTResults.consistencyText(self.prediction.consistency, self.prediction.consistency_score),
                 X2CTResults.runText(self.prediction.style, self.prediction.sampling)]
        return "\n".join(line for line in lines if line)

    def oodText(self) -> str:
        """The out-of-distribution line ("" when the model has no reference)."""
        return X2CTResults.oodText(self.prediction.ood)

    @property
    def outOfDistribution(self) -> bool:
        return self.prediction.ood is not None and bool(self.prediction.ood.flagged)


ProgressCallback = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``, called on the GUI thread."""
CompletedCallback = Callable[[Optional[X2CTReconResults], Optional[BaseException]], None]
"""``completed(results, error)``: exactly one of them is None; called on the GUI thread."""


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
        self._results: Optional[X2CTReconResults] = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/X2CTRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.bannerLabel.text = SYNTHETIC_BANNER
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False

        self.logic = X2CTReconLogic()
        self._fillModelChoices()
        self._fillStyleChoices()

        # Keep the parameter node valid when the scene is closed.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.styleComboBox.connect("currentIndexChanged(int)", self.onStyleChanged)
        self.ui.styleCheckBox.connect("toggled(bool)", self._updateOptionControls)
        self.ui.heatMapOutputComboBox.connect("currentIndexChanged(int)", self.onHeatMapDisplayChanged)
        self.ui.heatMapOverComboBox.connect("currentIndexChanged(int)", self.onHeatMapDisplayChanged)
        self.ui.heatMapOpacitySlider.connect("valueChanged(double)", self.onHeatMapOpacityChanged)
        self.ui.heatMapThresholdSlider.connect("valueChanged(double)", self.onHeatMapThresholdChanged)
        self.ui.saveVolumeButton.connect("clicked(bool)", self.onSaveVolume)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.saveFindingsButton.connect("clicked(bool)", self.onSaveFindings)

        self._showResults(None)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancel()
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
        self._showResults(None)

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
            self._selectModel(self._parameterNode.model)
            self._selectStyle(self._parameterNode.style)
            self._updateOptionControls()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _labelDeviceChoices(self) -> None:
        """Readable labels for the device combo box (the binding fills it with the raw choices)."""
        for index, choice in enumerate(DEVICE_CHOICES):
            if index < self.ui.deviceComboBox.count:
                self.ui.deviceComboBox.setItemText(index, DEVICE_LABELS[choice])

    def _fillModelChoices(self) -> None:
        """Automatic plus every bundled model; each model's card is its tooltip."""
        import qt

        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("Automatic (biplanar with a lateral, single-view without)"), AUTOMATIC_MODEL)
        combo.setItemData(0, _("The bundled default model for the radiographs given."), qt.Qt.ToolTipRole)
        for name, card in self.logic.bundledModels():
            combo.addItem(name, name)
            combo.setItemData(combo.count - 1, card, qt.Qt.ToolTipRole)
        combo.blockSignals(False)

    def _selectModel(self, name: str) -> None:
        index = self.ui.modelComboBox.findData(name)
        self.ui.modelComboBox.currentIndex = max(index, 0)

    def onModelChanged(self, index: int) -> None:
        import qt

        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or AUTOMATIC_MODEL
        self.ui.modelComboBox.toolTip = self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or ""
        self._updateOptionControls()

    def _fillStyleChoices(self) -> None:
        """Every bundled style model (CycleGAN real -> DRR); each model's card is its tooltip."""
        import qt

        combo = self.ui.styleComboBox
        combo.blockSignals(True)
        combo.clear()
        for name, card in self.logic.bundledStyles():
            combo.addItem(name, name)
            combo.setItemData(combo.count - 1, card, qt.Qt.ToolTipRole)
        combo.blockSignals(False)

    def _selectStyle(self, name: str) -> None:
        index = self.ui.styleComboBox.findData(name)
        self.ui.styleComboBox.currentIndex = max(index, 0)
        if self._parameterNode and self.ui.styleComboBox.count:
            self._parameterNode.style = self.ui.styleComboBox.itemData(self.ui.styleComboBox.currentIndex)

    def onStyleChanged(self, index: int) -> None:
        import qt

        if self._parameterNode:
            self._parameterNode.style = self.ui.styleComboBox.itemData(index) or ""
        self.ui.styleComboBox.toolTip = self.ui.styleComboBox.itemData(index, qt.Qt.ToolTipRole) or ""

    def _updateOptionControls(self, checked: bool = False) -> None:
        """The style choice needs the checkbox and a bundled style; samples and guidance need a stochastic model."""
        haveStyles = self.ui.styleComboBox.count > 0
        self.ui.styleCheckBox.enabled = haveStyles
        self.ui.styleComboBox.enabled = haveStyles and self.ui.styleCheckBox.checked
        model = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) or AUTOMATIC_MODEL
        stochastic = self.logic is not None and self.logic.isStochasticModel(model)
        for widget in (self.ui.samplesLabel, self.ui.samplesSpinBox, self.ui.guidanceLabel, self.ui.guidanceSpinBox):
            widget.enabled = stochastic

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self.logic is not None and self.logic.isRunning
        if running:
            self.ui.applyButton.toolTip = _("A synthetic CT is being computed")
            self.ui.applyButton.enabled = False
        elif not parameters or not parameters.paVolume:
            self.ui.applyButton.toolTip = _("Select a frontal (PA) radiograph")
            self.ui.applyButton.enabled = False
        elif parameters.lateralVolume is not None and parameters.lateralVolume == parameters.paVolume:
            self.ui.applyButton.toolTip = _("The frontal and the lateral inputs must be different radiographs")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Compute a synthetic CT from the selected radiographs")
            self.ui.applyButton.enabled = True

    # Running

    def onApplyButton(self) -> None:
        """Check the dependencies (asking before installing), then reconstruct in the background."""
        parameters = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                self.logic.checkDependencies(requireTorch=True, askConfirmation=True)
            if self.ui.modelComboBox.count == 1:
                self._fillModelChoices()  # the models can be listed once x2ct imports (after the install)
                self._selectModel(parameters.model)
            if self.ui.styleComboBox.count == 0:
                self._fillStyleChoices()
                self._selectStyle(parameters.style)
                self._updateOptionControls()
            stochastic = self.logic.isStochasticModel(parameters.model)
            self._setRunning(True, _("Starting…"))
            self.logic.process(
                parameters.paVolume,
                parameters.lateralVolume,
                modelName=parameters.model,
                device=parameters.device,
                style=parameters.style if parameters.translateStyle and parameters.style else None,
                samples=parameters.samples if stochastic else None,
                guidance=parameters.guidance if stochastic else None,
                heatMapThreshold=parameters.heatMapThreshold,
                heatMapOpacity=parameters.heatMapOpacity,
                waitForCompletion=False,
                progressCallback=self._onProgress,
                completedCallback=self._onCompleted,
            )
            self._checkCanApply()  # the logic is running now: Apply stays disabled until it completes
        except Exception as err:  # noqa: BLE001 - every failure becomes one message (details in the log)
            self._setRunning(False)
            self._reportError(err)

    def onCancelButton(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling after the current step…")
        self.ui.cancelButton.enabled = False

    def _setRunning(self, running: bool, status: str = "") -> None:
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        self.ui.cancelButton.visible = running
        self.ui.cancelButton.enabled = running
        self.ui.statusLabel.text = status
        self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _onCompleted(self, results: Optional[X2CTReconResults], error: Optional[BaseException]) -> None:
        self._setRunning(False)
        if error is not None:
            self._reportError(error)
            return
        self.ui.statusLabel.text = _("Done: {name}").format(name=results.ctVolume.GetName())
        self._showResults(results)

    def _reportError(self, error: BaseException) -> None:
        """One message for the user; the stack trace goes to the log only."""
        message = self.logic.errorMessage(error)
        if self.logic.isCancellation(error):
            self.ui.statusLabel.text = message
            return
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle=_("X2CT Recon"))

    # Results

    def _showResults(self, results: Optional[X2CTReconResults]) -> None:
        self._results = results
        has = results is not None
        for widget in (self.ui.resultsCollapsibleButton, self.ui.saveCollapsibleButton):
            widget.enabled = has
        if not has:
            self.ui.consistencyLabel.text = ""
            self.ui.oodLabel.text = ""
            self.ui.findingsTableView.setMRMLTableNode(None)
            self.ui.heatMapOutputComboBox.clear()
            self.ui.heatMapOverComboBox.clear()
            return
        lines = [results.consistencyText()]
        lines += [f"warning: {warning}" for warning in results.warnings]
        self.ui.consistencyLabel.text = "\n".join(lines)
        self.ui.oodLabel.text = results.oodText()
        self.ui.oodLabel.styleSheet = X2CTResults.OOD_WARNING_STYLE if results.outOfDistribution else ""
        self.ui.findingsTableView.setMRMLTableNode(results.findingsTable)
        self.ui.findingsLabel.text = (
            "" if results.prediction.findings else _("No classifier ran for this model: no findings.")
        )
        for combo in (self.ui.heatMapOutputComboBox, self.ui.heatMapOverComboBox):
            combo.blockSignals(True)
            combo.clear()
        for output in results.heatMapOutputs:
            self.ui.heatMapOutputComboBox.addItem(results.findingLabel(output), output)
        for source in HEAT_MAP_SOURCES:
            if source == "ct" or source in results.radiographVolumes:
                self.ui.heatMapOverComboBox.addItem(_("over the {what}").format(what=HEAT_MAP_SOURCE_LABELS[source]),
                                                    source)
        for combo in (self.ui.heatMapOutputComboBox, self.ui.heatMapOverComboBox):
            combo.blockSignals(False)
        self.ui.heatMapOutputComboBox.enabled = bool(results.heatMapOutputs)
        self.onHeatMapDisplayChanged()

    def onHeatMapDisplayChanged(self, index: int = 0) -> None:
        if not self._results or not self._parameterNode:
            return
        over, outputs = self.ui.heatMapOverComboBox, self.ui.heatMapOutputComboBox
        self.logic.showSliceLayers(
            self._results,
            source=over.itemData(over.currentIndex) or "ct",
            output=outputs.itemData(outputs.currentIndex) if outputs.count else None,
            opacity=self._parameterNode.heatMapOpacity,
        )

    def onHeatMapOpacityChanged(self, value: float) -> None:
        if self._results:
            self.logic.setHeatMapOpacity(value)

    def onHeatMapThresholdChanged(self, value: float) -> None:
        if self._results:
            self.logic.setHeatMapThreshold(self._results, value)

    # Saving

    def onSaveVolume(self) -> None:
        import qt

        path = qt.QFileDialog.getSaveFileName(
            None, _("Save the synthetic CT"), f"{self._results.ctVolume.GetName()}.nrrd", "NRRD (*.nrrd)"
        )
        if path:
            self._runSaving(lambda: self.logic.saveSyntheticCT(self._results, path), _("Saved {path}"), path)

    def onExportDicom(self) -> None:
        self._runSaving(lambda: self.logic.exportToDicomDatabase(self._results), _("Imported into the DICOM "
                        "database as a series marked SYNTHETIC (from {path})"), None)

    def onSaveFindings(self) -> None:
        import qt

        path = qt.QFileDialog.getSaveFileName(None, _("Save the findings"), "findings.csv", "CSV (*.csv)")
        if path:
            self._runSaving(lambda: self.logic.saveFindingsCSV(self._results, path), _("Saved {path}"), path)

    def _runSaving(self, action: Callable[[], Any], doneMessage: str, path: Optional[str]) -> None:
        try:
            with slicer.util.WaitCursor():
                written = action()
        except Exception as err:  # noqa: BLE001 - one message; details in the log
            self._reportError(err)
            return
        self.ui.statusLabel.text = doneMessage.format(path=path or written)


#
# X2CTReconLogic
#


class X2CTReconLogic(ScriptedLoadableModuleLogic):
    """All computation of the module; usable without the GUI (batch scripts, tests).

    It delegates everything that is not MRML to the ``x2ct`` package. ``process`` runs the pipeline
    blocking (``waitForCompletion=True``: tests, batch) or on a worker thread polled from the GUI
    thread with ``qt.QTimer.singleShot``; only the GUI thread touches the scene.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        X2CTReconLib.addBundledX2CTToPath()
        self._modelCaches: Dict[str, Any] = {}
        self._run: Optional[Dict[str, Any]] = None

    def getParameterNode(self):
        return X2CTReconParameterNode(super().getParameterNode())

    # Dependencies

    def checkDependencies(self, requireTorch: bool = True, askConfirmation: bool = True,
                          allowInstall: bool = True) -> None:
        """Make sure PyTorch (if required), x2ct's pip requirements and the ``x2ct`` package can be imported.

        PyTorch is installed through the PyTorch extension (PyTorchUtils) and the other requirements
        with ``slicer.util.pip_install``; both only after asking when ``askConfirmation`` is True,
        never when ``allowInstall`` is False (batch runs: the message then says what is missing).
        Packages already present are never upgraded (X2CTReconLib.dependencies). Raises
        X2CTReconLib.DependencyError with one clear message.
        """
        if requireTorch:
            self._ensureTorch(askConfirmation, allowInstall)

        requirements = X2CTDependencies.readRequirements(REQUIREMENTS_FILE)
        missing, notes = X2CTDependencies.checkRequirements(requirements)
        for note in notes:
            logging.warning(f"X2CTRecon: {note}")
        if missing:
            self._installRequirements(missing, askConfirmation, allowInstall)

        if X2CTReconLib.addBundledX2CTToPath() is None:
            logging.info("X2CTRecon: no bundled x2ct package found; using the one installed in Slicer's Python")
        try:
            import x2ct.errors  # noqa: F401
            import x2ct.geometry  # noqa: F401
            import x2ct.io.radiograph  # noqa: F401
            if requireTorch:
                import x2ct.inference  # noqa: F401
        except ImportError as err:
            missingName = getattr(err, "name", None) or str(err)
            raise X2CTReconLib.DependencyError(
                f"X2CT Recon could not load its x2ct package: Python module '{missingName}' is missing or unusable. "
                "Reinstall the SlicerX2CT extension; see the README for the list of required packages."
            ) from err

    def _ensureTorch(self, askConfirmation: bool, allowInstall: bool) -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as err:
            raise X2CTReconLib.DependencyError(
                "X2CT Recon needs the PyTorch extension. "
                "Install 'PyTorch' from the Extensions Manager and restart Slicer."
            ) from err
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return
        if not allowInstall:
            raise X2CTReconLib.DependencyError(
                "PyTorch is not installed. Open X2CT Recon in the Slicer window once (it offers to install it) "
                "or install it in the PyTorch Utils module."
            )
        torch = torchLogic.installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}"
        )
        if torch is None:
            raise X2CTReconLib.DependencyError(
                "X2CT Recon needs PyTorch, which was not installed. Install it in the PyTorch Utils module."
            )

    def _installRequirements(self, missing: List[str], askConfirmation: bool, allowInstall: bool) -> None:
        listed = ", ".join(missing)
        if not allowInstall:
            raise X2CTReconLib.DependencyError(
                f"Python packages missing for X2CT Recon: {listed}. Open X2CT Recon in the Slicer window once "
                "(it offers to install them)."
            )
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("X2CT Recon needs these Python packages, which will be downloaded and installed into Slicer's "
              "Python: {packages}. Packages Slicer already has are not changed. Continue?").format(packages=listed),
            windowTitle=_("X2CT Recon: install Python packages"),
        ):
            raise X2CTReconLib.DependencyError(f"X2CT Recon cannot run without these Python packages: {listed}.")
        folder = slicer.util.tempDirectory("X2CTReconPip")
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as handle:
            handle.write(X2CTDependencies.constraintsText(X2CTDependencies.installedDistributions()))
        args, kwargs = X2CTDependencies.pipInstallCall(self.slicerVersion(), missing, constraints, "X2CT Recon")
        logging.info(f"X2CTRecon: installing {listed} (installed packages pinned by {constraints})")
        try:
            slicer.util.pip_install(*args, **kwargs)
        except Exception as err:
            raise X2CTReconLib.DependencyError(
                f"Installing {listed} failed ({type(err).__name__}). Check the network, restart Slicer and try "
                "again; pip's full output is in the Python console."
            ) from err
        import importlib

        importlib.invalidate_caches()

    @staticmethod
    def slicerVersion() -> Tuple[int, int]:
        """(major, minor) of the running Slicer (qSlicerCoreApplication majorVersion/minorVersion)."""
        return int(slicer.app.majorVersion), int(slicer.app.minorVersion)

    @staticmethod
    def userErrorTypes() -> Tuple[type, ...]:
        """Exception types a user can cause; they are shown as one message, without a traceback."""
        try:
            from x2ct.errors import InputError
        except ImportError:
            return (X2CTReconLib.DependencyError,)
        return (X2CTReconLib.DependencyError, InputError)

    @staticmethod
    def isCancellation(error: BaseException) -> bool:
        return type(error).__name__ == "PredictionCancelled"

    def errorMessage(self, error: BaseException) -> str:
        """The one line shown to the user for ``error``; anything unexpected is also logged with its trace."""
        if self.isCancellation(error):
            return _("Cancelled; nothing was added to the scene.")
        if isinstance(error, self.userErrorTypes()):
            return str(error)
        logging.error("X2CTRecon: unexpected error", exc_info=(type(error), error, error.__traceback__))
        if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
            return _("The GPU ran out of memory. Choose CPU under Advanced and try again.")
        return _("X2CT Recon failed: {kind}: {text}. The details are in the Python console / error log.").format(
            kind=type(error).__name__, text=str(error).splitlines()[0] if str(error) else "")

    # Models

    def bundledModels(self) -> List[Tuple[str, str]]:
        """(name, model card text) of every bundled model; empty while x2ct cannot be imported yet."""
        try:
            from x2ct.models.checkpoints import bundled_model_names, models_dir
        except ImportError:
            return []
        return [(name, X2CTResults.modelCardTooltip(models_dir(), name)) for name in bundled_model_names()]

    def bundledStyles(self) -> List[Tuple[str, str]]:
        """(name, model card text) of every bundled style model; empty while x2ct cannot be imported yet."""
        try:
            from x2ct.inference.style import bundled_style_names, styles_dir
        except ImportError:
            return []
        return [(name, X2CTResults.modelCardTooltip(styles_dir(), name)) for name in bundled_style_names()]

    def isStochasticModel(self, modelName: str) -> bool:
        """Whether the bundled model ``modelName`` is sampled several times (latent diffusion); False for the
        automatic choice (the deterministic demo models) and while x2ct cannot be imported yet."""
        if not modelName:
            return False
        try:
            from x2ct.inference.models import is_stochastic_bundled
        except ImportError:
            return False
        return is_stochastic_bundled(modelName)

    def _modelCache(self, device: str):
        from x2ct.inference import ModelCache

        if device not in self._modelCaches:
            self._modelCaches[device] = ModelCache(device)
        return self._modelCaches[device]

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

    # Reconstruction

    def runPipeline(self, paPath: str, lateralPath: Optional[str], modelName: str, device: str,
                    force: bool = False, viewOverride: bool = False, progress=None, cancel=None, options=None):
        """The one call of x2ct's inference pipeline; returns an ``x2ct.inference.Prediction``.

        ``options``: an ``x2ct.inference.GenerationOptions`` (style model, sampling) or None. Runs on the worker
        thread in non-blocking mode: no MRML here.
        """
        from x2ct.inference import predict

        if progress is not None:
            progress(0.0, "loading the model")
        cache = self._modelCache(device)
        model = cache.get(modelName or None, have_lateral=lateralPath is not None)
        classifiers = cache.classifiers(have_lateral=lateralPath is not None)
        style = cache.style(options.style) if options is not None and options.style else None
        return predict(model, paPath, lateralPath, force, viewOverride, progress, cancel, classifiers, options, style)

    @property
    def isRunning(self) -> bool:
        return self._run is not None

    def process(self, paVolume: vtkMRMLScalarVolumeNode, lateralVolume: Optional[vtkMRMLScalarVolumeNode] = None,
                modelName: str = AUTOMATIC_MODEL, device: str = "auto", force: bool = False,
                viewOverride: bool = False, waitForCompletion: bool = True, showResult: bool = True,
                progressCallback: Optional[ProgressCallback] = None,
                completedCallback: Optional[CompletedCallback] = None,
                heatMapThreshold: Optional[float] = None,
                heatMapOpacity: Optional[float] = None, style: Optional[str] = None,
                samples: Optional[int] = None, guidance: Optional[float] = None) -> Optional[X2CTReconResults]:
        """Reconstruct a synthetic CT from the radiographs behind ``paVolume`` (and ``lateralVolume``).

        ``style``: a style model (bundled name or path) that translates the radiographs to DRR style first;
        ``samples`` and ``guidance``: sampling of a stochastic (diffusion) model (None: its defaults; an error for a
        deterministic model, except ``samples`` 1). A bad style model or option is an InputError, raised (blocking)
        or handed to ``completedCallback``.

        Blocking (``waitForCompletion``): returns the results and raises on errors (InputError,
        PredictionCancelled, ...). Non-blocking: returns None at once; ``progressCallback(fraction,
        message)`` and finally ``completedCallback(results, error)`` are called on the GUI thread.
        Errors in the inputs' file lookup are raised at once in both modes. The heat maps are shown
        with ``heatMapThreshold`` and ``heatMapOpacity`` (see showPrediction; None: the parameter node's).
        """
        if self._run is not None:
            raise RuntimeError("a reconstruction is already running")
        paPath = self.radiographFilePath(paVolume)
        lateralPath = self.radiographFilePath(lateralVolume) if lateralVolume is not None else None

        from x2ct.inference import GenerationOptions

        options = GenerationOptions(style=style or None, samples=samples, guidance=guidance)

        def work(progress, cancel):
            return self.runPipeline(paPath, lateralPath, modelName, device, force, viewOverride, progress, cancel,
                                    options)

        def finish(prediction) -> X2CTReconResults:
            return self.showPrediction(prediction, paVolume, lateralVolume, showResult=showResult,
                                       heatMapThreshold=heatMapThreshold, heatMapOpacity=heatMapOpacity)

        if waitForCompletion:
            results = finish(work(progressCallback, None))
            if progressCallback:
                progressCallback(1.0, "done")
            if completedCallback:
                completedCallback(results, None)
            return results

        task = BackgroundTask(work)
        self._run = {"task": task, "finish": finish, "progress": progressCallback, "completed": completedCallback}
        task.start()
        self._scheduleCheck()
        return None

    def cancel(self) -> None:
        """Ask a running reconstruction to stop at its next stage (nothing is added to the scene)."""
        if self._run is not None:
            self._run["task"].cancel()

    def _scheduleCheck(self) -> None:
        import qt

        qt.QTimer.singleShot(POLL_INTERVAL_MSEC, self._checkRun)

    def _checkRun(self) -> None:
        """GUI thread: forward progress; when the worker is done, add the results to the scene."""
        run = self._run
        if run is None:
            return
        task = run["task"]
        finished = task.done  # read before draining, so no update can arrive after the last poll
        for fraction, message in task.poll():
            if run["progress"]:
                run["progress"](0.95 * fraction, message)
        if not finished:
            self._scheduleCheck()
            return
        self._run = None
        prediction, error = task.outcome()
        results = None
        if error is None:
            try:
                if run["progress"]:
                    run["progress"](0.95, "adding the results to the scene")
                results = run["finish"](prediction)
                if run["progress"]:
                    run["progress"](1.0, "done")
            except Exception as err:  # noqa: BLE001 - reported through completedCallback
                error = err
        if run["completed"]:
            run["completed"](results, error)
        elif error is not None:
            logging.error(f"X2CTRecon: {self.errorMessage(error)}")

    # Scene

    def showPrediction(self, prediction, paVolume: vtkMRMLScalarVolumeNode,
                       lateralVolume: Optional[vtkMRMLScalarVolumeNode] = None, showResult: bool = True,
                       heatMapThreshold: Optional[float] = None,
                       heatMapOpacity: Optional[float] = None) -> X2CTReconResults:
        """Put a prediction in the scene: the CT, the findings table, the Grad-CAM volumes and, for a stochastic
        model, the SD over its samples (HU, on the CT's grid).

        Heat-map values below ``heatMapThreshold`` (of the map's range) are transparent. With ``showResult`` the
        layout becomes slices + 3D, the CT is volume rendered and shown in the slice views with the SD map or else
        the first finding's CT heat map as foreground at ``heatMapOpacity``. Both default to the parameter
        node's values.
        """
        from x2ct import views

        parameters = self.getParameterNode()
        if heatMapThreshold is None:
            heatMapThreshold = parameters.heatMapThreshold
        if heatMapOpacity is None:
            heatMapOpacity = parameters.heatMapOpacity
        radiographs = {views.PA_KEY: paVolume}
        if lateralVolume is not None:
            radiographs[views.LATERAL_KEY] = lateralVolume
        ctVolume = self.addSyntheticCT(prediction)
        table = self.addFindingsTable(prediction.findings, f"SYNTHETIC CT findings ({prediction.model.name})")
        warnings = list(prediction.warnings)
        heatMaps: Dict[str, Dict[str, vtkMRMLScalarVolumeNode]] = {}
        for output, heatMap in sorted(prediction.heat_maps.ct.items()):
            node = self.addVolumeFromImage(prediction.grid.image_from_array(heatMap.astype("float32")),
                                           f"SYNTHETIC Grad-CAM {output} on CT")
            self.configureHeatMapDisplay(node, heatMapThreshold)
            heatMaps.setdefault(views.CT_KEY, {})[output] = node
        for source in sorted(views.input_key(view) for view in prediction.heat_maps.radiographs):
            view = views.view_of_key(source)
            volume = radiographs.get(source)
            prepared = prediction.views.get(view)
            for output, heatMap in sorted(prediction.heat_maps.radiographs[view].items()):
                if volume is None or prepared is None:
                    warnings.append(f"Grad-CAM {output} on {source}: no such input radiograph in the scene")
                    continue
                try:
                    node = self.addRadiographHeatMap(heatMap, volume, prepared.radiograph.pixels,
                                                     f"Grad-CAM {output} on {volume.GetName()}",
                                                     prepared.radiograph.metadata.get("reduction") or 1)
                except ValueError as err:
                    warnings.append(f"Grad-CAM {output} on {source} not shown: {err}")
                    continue
                self.configureHeatMapDisplay(node, heatMapThreshold)
                heatMaps.setdefault(source, {})[output] = node
        uncertaintyVolume = self.addUncertaintyVolume(prediction, heatMapThreshold)
        results = X2CTReconResults(prediction, ctVolume, table, heatMaps, radiographs, warnings, uncertaintyVolume)
        if showResult:
            self.showLayout(ctVolume)
            outputs = results.heatMapOutputs
            self.showSliceLayers(results, "ct", outputs[0] if outputs else None, heatMapOpacity)
        return results

    def addVolumeFromImage(self, image, name: str) -> vtkMRMLScalarVolumeNode:
        """Add a scalar volume node holding a SimpleITK image, placed correctly in RAS.

        SimpleITK's origin, spacing and direction are LPS; X2CTReconLib converts them to Slicer's IJKToRAS.
        """
        return slicer.util.addVolumeFromArray(
            X2CTReconLib.voxelArrayFromImage(image), ijkToRAS=X2CTReconLib.ijkToRASFromImage(image), name=name
        )

    def addSyntheticCT(self, prediction) -> vtkMRMLScalarVolumeNode:
        """The synthetic CT (HU) as a volume named "SYNTHETIC CT (<model>)", tagged with its provenance."""
        from x2ct.inference import SYNTHETIC_NOTE

        model = prediction.model
        volume = self.addVolumeFromImage(prediction.image(), f"SYNTHETIC CT ({model.name})")
        volume.SetAttribute("X2CT.Synthetic", SYNTHETIC_NOTE)
        volume.SetAttribute("X2CT.Model", model.name)
        volume.SetAttribute("X2CT.WeightsSHA256", model.sha256 or "unknown")
        display = volume.GetScalarVolumeDisplayNode()
        if display is not None:
            display.SetAutoWindowLevel(0)
            display.SetWindowLevel(*CT_WINDOW_LEVEL_HU)
        return volume

    def addUncertaintyVolume(self, prediction, threshold: float) -> Optional[vtkMRMLScalarVolumeNode]:
        """A stochastic model's per-voxel SD over its samples as the volume "SYNTHETIC SD (HU) over K samples
        (<model>)" on the CT's grid (x2ct's ``uncertainty_sd_hu.nrrd`` image), shown as a heat map; None without
        one."""
        image = prediction.uncertainty_image()
        if image is None:
            return None
        from x2ct.inference import SYNTHETIC_NOTE

        model = prediction.model
        volume = self.addVolumeFromImage(image, f"SYNTHETIC SD (HU) over {prediction.sampling.samples} samples "
                                                f"({model.name})")
        volume.SetAttribute("X2CT.Synthetic", SYNTHETIC_NOTE)
        volume.SetAttribute("X2CT.Model", model.name)
        volume.SetAttribute("X2CT.Units", "HU")
        self.configureUncertaintyDisplay(volume, prediction.uncertainty_sd_hu, threshold)
        return volume

    def configureUncertaintyDisplay(self, volume: vtkMRMLScalarVolumeNode, sdHU, threshold: float) -> None:
        """Heat colours from 0 HU to the map's 99th percentile; SDs below ``threshold`` x that top are transparent."""
        import numpy as np

        top = float(np.percentile(sdHU, UNCERTAINTY_SCALE_PERCENTILE)) or 1.0
        self.configureHeatMapDisplay(volume, threshold)
        display = volume.GetScalarVolumeDisplayNode()
        display.SetWindowLevelMinMax(0.0, top)
        display.SetThreshold(threshold * top, max(float(np.max(sdHU)), top))

    def addFindingsTable(self, findings, name: str):
        """A locked vtkMRMLTableNode with one text row per finding (columns: X2CTReconLib.results.FINDINGS_COLUMNS)."""
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
        for column in X2CTResults.FINDINGS_COLUMNS:
            array = vtk.vtkStringArray()
            array.SetName(column)
            table.AddColumn(array)
        for row in X2CTResults.findingsRows(findings):
            rowIndex = table.AddEmptyRow()
            for columnIndex, text in enumerate(row):
                table.SetCellText(rowIndex, columnIndex, text)
        table.SetLocked(True)
        return table

    def addRadiographHeatMap(self, heatMap, radiographVolume: vtkMRMLScalarVolumeNode, x2ctPixels,
                             name: str, reduction: int = 1) -> vtkMRMLScalarVolumeNode:
        """A Grad-CAM map on a radiograph as a volume on that radiograph node's own pixel grid.

        ``heatMap`` and ``x2ctPixels`` are (rows, columns) as x2ct read the file, reduced by ``reduction``
        (x2ct's ``metadata["reduction"]``; the node holds the file's full pixel grid); the node's voxels
        are compared with them to find the loader's pixel order (X2CTReconLib.results), and the
        map gets the node's IJKToRAS and parent transform. Raises ValueError when the sizes differ.
        """
        nodePixels = slicer.util.arrayFromVolume(radiographVolume)
        if nodePixels.ndim != 3 or nodePixels.shape[0] != 1:
            raise ValueError(f"{radiographVolume.GetName()} is not a single 2-D image ({nodePixels.shape})")
        voxels = X2CTResults.radiographHeatMapVoxels(heatMap, nodePixels[0], x2ctPixels, reduction)
        ijkToRAS = vtk.vtkMatrix4x4()
        radiographVolume.GetIJKToRASMatrix(ijkToRAS)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name=name)
        transformID = radiographVolume.GetTransformNodeID()
        if transformID:
            volume.SetAndObserveTransformNodeID(transformID)
        return volume

    def configureHeatMapDisplay(self, volume: vtkMRMLScalarVolumeNode, threshold: float) -> None:
        """Heat colours over 0..1; values below ``threshold`` are transparent in the slice views."""
        display = volume.GetScalarVolumeDisplayNode()
        colorID = HEAT_MAP_COLOR_NODE_ID
        if slicer.mrmlScene.GetNodeByID(colorID) is None:
            colorID = FALLBACK_HEAT_MAP_COLOR_NODE_ID
        display.SetAndObserveColorNodeID(colorID)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetApplyThreshold(1)
        display.SetThreshold(threshold, 1.0)

    def setHeatMapThreshold(self, results: X2CTReconResults, threshold: float) -> None:
        for maps in results.heatMaps.values():
            for volume in maps.values():
                volume.GetScalarVolumeDisplayNode().SetThreshold(threshold, 1.0)
        if results.uncertaintyVolume is not None:
            self.configureUncertaintyDisplay(results.uncertaintyVolume, results.prediction.uncertainty_sd_hu,
                                             threshold)

    def setHeatMapOpacity(self, opacity: float) -> None:
        slicer.util.setSliceViewerLayers(foregroundOpacity=opacity)

    def showSliceLayers(self, results: X2CTReconResults, source: str = "ct", output: Optional[str] = None,
                        opacity: float = 0.4) -> None:
        """Slice views: the CT (``source`` "ct") or a radiograph as background, its heat map of ``output`` on top
        (``UNCERTAINTY_OUTPUT``: the SD map, over the CT only)."""
        background = results.ctVolume if source == "ct" else results.radiographVolumes[source]
        if output == UNCERTAINTY_OUTPUT:
            foreground = results.uncertaintyVolume if source == "ct" else None
        else:
            foreground = results.heatMaps.get(source, {}).get(output) if output else None
        haveViews = slicer.app.layoutManager() is not None
        slicer.util.setSliceViewerLayers(
            background=background, foreground=foreground, foregroundOpacity=opacity,
            fit=haveViews, rotateToVolumePlane=haveViews,
        )

    def showLayout(self, ctVolume: vtkMRMLScalarVolumeNode) -> None:
        """Slices + 3D layout and a chest CT volume rendering (nothing to do without views, e.g. batch)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        volumeRendering = slicer.modules.volumerendering.logic()
        display = volumeRendering.CreateDefaultVolumeRenderingNodes(ctVolume)
        preset = volumeRendering.GetPresetByName(VOLUME_RENDERING_PRESET)
        if preset is not None:
            display.GetVolumePropertyNode().Copy(preset)
        display.SetVisibility(1)
        slicer.util.resetThreeDViews()

    # Saving

    def saveSyntheticCT(self, results: X2CTReconResults, path: str) -> str:
        """Write the synthetic CT node (NRRD for a .nrrd path) with slicer.util.saveNode."""
        from x2ct.errors import InputError

        if not slicer.util.saveNode(results.ctVolume, str(path)):
            raise InputError(path, "could not be written (see the error log)")
        return str(path)

    def saveFindingsCSV(self, results: X2CTReconResults, path: str) -> str:
        return str(X2CTResults.writeFindingsCsv(results.prediction.findings, path))

    def writeOutputFolder(self, results: X2CTReconResults, folder: str, dicom: bool = False) -> str:
        """Write what ``x2ct predict`` writes (synthetic_ct.nrrd, summary.json, report.png[, dicom/])."""
        from x2ct.inference import write_prediction

        return str(write_prediction(results.prediction, folder, dicom=dicom))

    def exportToDicomDatabase(self, results: X2CTReconResults) -> str:
        """Write the CT as a DICOM series marked synthetic (x2ct) and import it into Slicer's DICOM database."""
        from x2ct.inference import OUTPUT_DICOM

        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise X2CTReconLib.DependencyError("Slicer's DICOM database is not open: open the DICOM module once.")
        folder = os.path.join(slicer.util.tempDirectory("X2CTReconDICOM"), "prediction")
        self.writeOutputFolder(results, folder, dicom=True)
        from DICOMLib import DICOMUtils

        if not DICOMUtils.importDicom(os.path.join(folder, OUTPUT_DICOM), database, copyFiles=True):
            raise X2CTReconLib.DependencyError("Importing the synthetic DICOM series failed; see the error log.")
        return folder


#
# X2CTReconTest
#


class X2CTReconTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer ("Reload and Test" or ctest). They need no network and no GPU.

    The checks are the functions of X2CTReconLib.selftest, which pytest also runs on Slicer's real
    MRML from the slicer-core wheel (Testing/test_slicer_logic.py).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_VolumeWithoutFileIsUserError, self.test_AddVolumeFromImageGeometry,
                     self.test_ReconstructSampleRadiographs, self.test_BackgroundRunAndCancel):
            self.setUp()
            test()

    def _logic(self) -> X2CTReconLogic:
        """A logic whose dependencies are present; tests never install anything (skipped, naming what is missing)."""
        logic = X2CTReconLogic()
        try:
            logic.checkDependencies(requireTorch=True, askConfirmation=False, allowInstall=False)
        except X2CTReconLib.DependencyError as err:
            self.skipTest(str(err))
        return logic

    def _loadSamples(self):
        from X2CTReconLib import selftest

        paPath, lateralPath = selftest.sampleRadiographPaths()
        return (slicer.util.loadVolume(str(paPath), {"singleFile": True}),
                slicer.util.loadVolume(str(lateralPath), {"singleFile": True}))

    def test_VolumeWithoutFileIsUserError(self):
        import numpy as np

        logic = X2CTReconLogic()
        logic.checkDependencies(requireTorch=False)
        volumeNode = slicer.util.addVolumeFromArray(np.zeros((1, 8, 8), np.uint8), name="not from a file")
        with self.assertRaises(logic.userErrorTypes()):
            logic.radiographFilePath(volumeNode)

    def test_AddVolumeFromImageGeometry(self):
        self.delayDisplay("Placing a canonical-grid image in RAS")
        import numpy as np
        from X2CTReconLib import selftest

        logic = X2CTReconLogic()
        logic.checkDependencies(requireTorch=False)
        from x2ct.geometry import CanonicalGrid

        grid = CanonicalGrid(size=64)
        voxels = np.zeros(grid.shape_dhw, np.float32)
        voxels[0, 0, 0] = 1.0
        volumeNode = logic.addVolumeFromImage(grid.image_from_array(voxels), "SYNTHETIC geometry test")
        selftest.checkVolumeGeometry(slicer, volumeNode, grid.ijk_to_ras(), voxels)
        self.delayDisplay("Test passed")

    def test_ReconstructSampleRadiographs(self):
        self.delayDisplay("Synthetic CT from the sample radiographs, with stand-in findings and heat maps")
        from X2CTReconLib import selftest

        logic = self._logic()
        paVolume, lateralVolume = self._loadSamples()
        results = logic.process(paVolume, lateralVolume, device="cpu", waitForCompletion=True)
        selftest.checkSyntheticCT(slicer, results)
        selftest.checkFindingsTable(results, results.prediction.findings)

        prediction = selftest.addStandInClassifierOutputs(results.prediction)
        results = logic.showPrediction(prediction, paVolume, lateralVolume, heatMapThreshold=0.25)
        selftest.checkFindingsTable(results, prediction.findings)
        selftest.checkHeatMaps(slicer, results, threshold=0.25)
        selftest.checkSliceLayers(slicer, results, logic)
        self.delayDisplay("Test passed")

    def test_BackgroundRunAndCancel(self):
        self.delayDisplay("Background reconstruction with progress, then a cancelled one")
        import time

        from X2CTReconLib import selftest

        logic = self._logic()
        paVolume, _lateral = self._loadSamples()

        def pump(record):
            deadline = time.time() + 120
            while not record.get("completed") and time.time() < deadline:
                slicer.app.processEvents()
                time.sleep(0.02)
            self.assertTrue(record.get("completed"), "the background run did not finish")

        record = selftest.runInBackground(slicer, logic, paVolume, cancelAtOnce=False)
        pump(record)
        selftest.checkBackgroundRecord(record, cancelled=False)
        record = selftest.runInBackground(slicer, logic, paVolume, cancelAtOnce=True)
        pump(record)
        selftest.checkBackgroundRecord(record, cancelled=True)
        self.delayDisplay("Test passed")
