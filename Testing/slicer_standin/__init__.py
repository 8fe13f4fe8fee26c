"""A small stand-in for the parts of Slicer that X2CTRecon's *logic* touches, with real VTK objects.

It lets pytest run X2CTReconLogic (and the checks of X2CTReconLib.selftest that X2CTReconTest runs
in Slicer) without Slicer. Names and signatures are Slicer's; each class or function cites the file
of Slicer/Slicer (or of a CTK/Qt API) it mirrors. Volume nodes hold a vtkImageData and a
vtkMatrix4x4, slice composite nodes hold layer ids and opacity, table nodes wrap a vtkTable.
``vtk`` is the real package. Nothing of the GUI exists: the widget is not exercised here.

Use :func:`install` with pytest's ``monkeypatch`` so that the fake modules vanish after the test.
"""

from __future__ import annotations

import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import mrml, util

VOLUME_RENDERING_PRESETS = ("CT-AAA", "CT-Bone", "CT-Chest-Contrast-Enhanced", "CT-Lung", "CT-MIP", "CT-X-ray")
"""A few preset names of Modules/Loadable/VolumeRendering/Resources/presets.xml."""

COLOR_NODE_IDS = ("vtkMRMLColorTableNodeGrey", "vtkMRMLColorTableNodeIron", "vtkMRMLColorTableNodeFileInferno.txt")
"""Default colour nodes (ids as in Libs/MRML/Logic/vtkMRMLColorLogic.h) that Slicer adds at startup."""


class LayoutManager:
    """qSlicerLayoutManager / qMRMLLayoutManager.h: ``layout`` property and ``setLayout(int)``."""

    def __init__(self) -> None:
        self.layout = 1  # SlicerLayoutDefaultView
        self.rotatedTo: Optional[str] = None  # recorded by util.setSliceViewerLayers
        self.fitted = 0

    def setLayout(self, layout: int) -> None:
        self.layout = int(layout)


class CommandOptions:
    """qSlicerCoreCommandOptions.h: the flags a script may read."""

    def __init__(self) -> None:
        self.noMainWindow = True
        self.testingEnabled = False


class Application:
    """slicer.app (qSlicerApplication.h / qSlicerCoreApplication.h): version properties and layoutManager()."""

    def __init__(self, major: int, minor: int, withViews: bool) -> None:
        self.majorVersion = major
        self.minorVersion = minor
        self._layoutManager = LayoutManager() if withViews else None

    def layoutManager(self) -> Optional[LayoutManager]:
        return self._layoutManager

    def commandOptions(self) -> CommandOptions:
        return CommandOptions()

    def processEvents(self) -> None:
        processEvents()


class VolumeRenderingLogic:
    """Modules/Loadable/VolumeRendering/Logic/vtkSlicerVolumeRenderingLogic.h."""

    def __init__(self, scene: mrml.vtkMRMLScene) -> None:
        self._scene = scene
        self._presets = {}
        for name in VOLUME_RENDERING_PRESETS:
            preset = mrml.vtkMRMLVolumePropertyNode()
            preset.SetName(name)
            self._presets[name] = preset

    def CreateDefaultVolumeRenderingNodes(self, volumeNode):
        for index in range(self._scene.GetNumberOfNodesByClass("vtkMRMLVolumeRenderingDisplayNode")):
            display = self._scene.GetNthNodeByClass(index, "vtkMRMLVolumeRenderingDisplayNode")
            if display.volumeNodeID == volumeNode.GetID():
                return display  # "Does not create new nodes if they exist already."
        display = self._scene.AddNewNodeByClass("vtkMRMLGPURayCastVolumeRenderingDisplayNode")
        display.volumeNodeID = volumeNode.GetID()
        return display

    def GetPresetByName(self, presetName: str):
        return self._presets.get(presetName)


class DicomDatabase:
    """ctkDICOMDatabase.h: ``isOpen`` and ``fileForInstance`` ("" for an unknown UID, like the real one)."""

    def __init__(self) -> None:
        self.files: Dict[str, str] = {}
        self.isOpen = True
        self.imported: List[Tuple[str, bool]] = []

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.files.get(sopInstanceUID, "")


_timers: List[Tuple[float, Callable[[], None]]] = []


def _singleShot(msec: int, callback: Callable[[], None]) -> None:
    """qt.QTimer.singleShot(msec, callable) as PythonQt exposes it."""
    _timers.append((time.monotonic() + msec / 1000.0, callback))


def processEvents() -> int:
    """Run the single-shot timers that are due (the GUI thread's event loop); returns how many ran."""
    now = time.monotonic()
    due = [entry for entry in _timers if entry[0] <= now]
    for entry in due:
        _timers.remove(entry)
        entry[1]()
    return len(due)


def runEventLoop(until: Callable[[], bool], timeoutSeconds: float = 60.0) -> bool:
    """Process timers until ``until()`` is true or the timeout passes; returns ``until()``."""
    deadline = time.monotonic() + timeoutSeconds
    while not until() and time.monotonic() < deadline:
        if not processEvents():
            time.sleep(0.01)
    return until()


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        pass


_parameterNodes: Dict[str, _ScriptedModuleNode] = {}
"""The scene's parameter node of each module (by logic class), as ScriptedLoadableModuleLogic keeps one per module."""


class _ScriptedModuleNode:
    """vtkMRMLScriptedModuleNode (Libs/MRML/Core/vtkMRMLScriptedModuleNode.h): a module's named parameters."""

    def __init__(self) -> None:
        self.parameters: Dict[str, Any] = {}


class _Logic(_Base):
    def getParameterNode(self):
        """ScriptedLoadableModuleLogic.getParameterNode: the module's one parameter node, made on first use."""
        return _parameterNodes.setdefault(type(self).__name__, _ScriptedModuleNode())


def _parameterNodeWrapper(cls: type) -> type:
    """parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/wrapper.py): a class over a parameter node whose
    annotated fields read and write the node's parameters; a field the node lacks starts at the class default."""
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    def __init__(self, node: _ScriptedModuleNode) -> None:
        object.__setattr__(self, "parameterNode", node)
        for name, value in defaults.items():
            node.parameters.setdefault(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in defaults:
            return self.parameterNode.parameters[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in defaults:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        self.parameterNode.parameters[name] = value

    members = {"__init__": __init__, "__getattr__": __getattr__, "__setattr__": __setattr__, "__doc__": cls.__doc__}
    return type(cls.__name__, (), members)


def _importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False) -> bool:
    """Modules/Scripted/DICOMLib/DICOMUtils.py importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False)."""
    import slicer

    (dicomDatabase or slicer.dicomDatabase).imported.append((str(dicomDataDir), bool(copyFiles)))
    return True


class _Validator:
    """Choice / WithinRange of Base/Python/slicer/parameterNodeWrapper/validators.py (arguments kept only)."""

    def __init__(self, *args) -> None:
        self.args = args


def make_modules(major: int = 5, minor: int = 8, withViews: bool = False) -> Dict[str, types.ModuleType]:
    """Fresh fake modules keyed by import name (the real ``vtk`` is used as is)."""
    util.calls.clear()
    util.answers["confirmOkCancelDisplay"] = True
    _timers.clear()
    _parameterNodes.clear()
    scene = mrml.vtkMRMLScene()
    for name in ("Red", "Yellow", "Green"):
        composite = scene.AddNode(mrml.vtkMRMLSliceCompositeNode())
        composite.SetName(f"SliceComposite{name}")
    for colorID in COLOR_NODE_IDS:
        color = mrml.vtkMRMLColorTableNode()
        color._id = colorID
        scene.AddNode(color)

    slicer = types.ModuleType("slicer")
    slicerUtil = types.ModuleType("slicer.util")
    for name in (
        "addVolumeFromArray", "updateVolumeFromArray", "arrayFromVolume", "arrayFromVTKMatrix", "vtkMatrixFromArray",
        "loadVolume", "saveNode", "setSliceViewerLayers", "resetThreeDViews", "tempDirectory", "errorDisplay",
        "confirmOkCancelDisplay", "pip_install", "VTKObservationMixin", "WaitCursor",
    ):
        setattr(slicerUtil, name, getattr(util, name))
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (_Base,), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (_Base,), {})
    scripted.ScriptedLoadableModuleLogic = _Logic
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (_Base,), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _parameterNodeWrapper
    wrapper.Choice = type("Choice", (_Validator,), {})
    wrapper.WithinRange = type("WithinRange", (_Validator,), {})

    slicer.util = slicerUtil
    slicer.i18n = i18n
    slicer.ScriptedLoadableModule = scripted
    slicer.parameterNodeWrapper = wrapper
    slicer.mrmlScene = scene
    slicer.app = Application(major, minor, withViews)
    slicer.dicomDatabase = DicomDatabase()
    slicer.vtkMRMLNode = mrml.vtkMRMLNode
    slicer.vtkMRMLScalarVolumeNode = mrml.vtkMRMLScalarVolumeNode
    slicer.vtkMRMLLayoutNode = types.SimpleNamespace(SlicerLayoutConventionalView=2, SlicerLayoutFourUpView=3)
    volumeRendering = VolumeRenderingLogic(scene)
    slicer.modules = types.SimpleNamespace(volumerendering=types.SimpleNamespace(logic=lambda: volumeRendering))

    qt = types.ModuleType("qt")
    qt.QTimer = types.SimpleNamespace(singleShot=_singleShot)
    dicomLib = types.ModuleType("DICOMLib")
    dicomUtils = types.ModuleType("DICOMLib.DICOMUtils")
    dicomUtils.importDicom = _importDicom
    dicomLib.DICOMUtils = dicomUtils
    return {
        "slicer": slicer,
        "slicer.util": slicerUtil,
        "slicer.i18n": i18n,
        "slicer.ScriptedLoadableModule": scripted,
        "slicer.parameterNodeWrapper": wrapper,
        "qt": qt,
        "DICOMLib": dicomLib,
        "DICOMLib.DICOMUtils": dicomUtils,
    }


def install(monkeypatch, major: int = 5, minor: int = 8, withViews: bool = False) -> types.ModuleType:
    """Put the fake modules in ``sys.modules`` for one test; return the fake ``slicer``."""
    import sys

    modules = make_modules(major, minor, withViews)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules["slicer"]


def volumeFromFile(slicer: types.ModuleType, fileName: Optional[str], name: str = ""):
    """A volume node whose storage node names ``fileName`` but holds no voxels (a file moved after loading)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if fileName:
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(fileName)
        node.SetAndObserveStorageNodeID(storage.GetID())
    return node
