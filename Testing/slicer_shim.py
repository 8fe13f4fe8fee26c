"""What ``slicer-core`` lacks to run X2CTRecon's logic, built on Slicer's real MRML and logics.

``slicer-core`` (PyPI, Kitware's wheel of Slicer's Qt-free core, Python >= 3.10) brings the MRML scene
and nodes, the loadable modules' logics, the vtkITK readers and Slicer's own ``slicer/util.py``. It
has no ``slicer.app``, no Qt, no layout manager, no ``slicer.modules``, no DICOM database and no
ScriptedLoadableModule. :func:`install` adds exactly those, for one test, under the real ``slicer``
package; real ``slicer.util`` runs unmodified on top of them. Each piece names the Slicer/Slicer file
(main branch) whose behaviour it reproduces:

- ``slicer.app`` (Base/QTCore/qSlicerCoreApplication.h): version, ``testingEnabled()`` False (dialogs
  reach :class:`ctkMessageBox`), no top-level widgets, ``coreIOManager()`` and, with views,
  ``layoutManager()``;
- :class:`LayoutManager` (Libs/MRML/Widgets/qMRMLLayoutManager.cxx): a real ``vtkMRMLLayoutLogic``
  and one real ``vtkMRMLSliceLogic`` per slice view of the layouts set (Red, Green, Yellow, and those of custom
  layouts), which create the slice composite nodes, as qMRMLSliceWidget does;
- :class:`IOManager` (Base/QTCore/qSlicerCoreIOManager.cxx): volumes read by the real
  ``vtkSlicerVolumesLogic.AddArchetypeVolume`` with qSlicerVolumesReader.cxx's options and ``show``
  default, written by the node's real storage node as qSlicerNodeWriter.cxx does;
- ``slicer.modules.<name>.logic()``: the real volumes, volume-rendering (presets from
  ``Testing/data/slicer_share/presets.xml``), colors (``ColorFiles/Inferno.txt``) and tables logics;
- ``qt`` / ``ctk``: ``QTimer.singleShot`` with a hand-pumped event loop, the file and date helpers
  ``slicer.util.tempDirectory`` uses, the override cursor, and a ``ctkMessageBox`` that records
  the dialog and answers :data:`answers`;
- ``slicer.packaging.pip_install`` and ``DICOMLib.DICOMUtils.importDicom``: recorded in :data:`calls`;
  ``slicer.dicomDatabase``: a dictionary of instance UID -> file;
- ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``: the few
  members the module uses; the parameter node is a real ``vtkMRMLScriptedModuleNode`` and the test
  class a ``unittest.TestCase``, so X2CTReconTest itself can run.

Nothing of the GUI exists: the widget is not exercised here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
import unittest
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

SHARE_DIR = Path(__file__).resolve().parent / "data" / "slicer_share"
"""Slicer's share files the logics read (see its PROVENANCE.md)."""

MISSING_REASON = "slicer-core (Slicer's MRML as a wheel; Python >= 3.10) is not installed"

calls: List[Dict[str, Any]] = []
"""Every dialog, pip install, DICOM import and 3-D view reset, in order: {"function": name, **arguments}."""

answers: Dict[str, bool] = {"confirm": True}
"""What the confirmation dialogs answer (Ok when True)."""


def available() -> bool:
    """True when slicer-core is importable."""
    return importlib.util.find_spec("slicer_core") is not None


# --- qt and ctk ---------------------------------------------------------------------------------------------


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


class _QDir:
    """QDir: a path, ``mkpath``."""

    def __init__(self, path: Any = "") -> None:
        self.path = str(getattr(path, "path", path))

    def mkpath(self, path: str) -> bool:
        os.makedirs(path, exist_ok=True)
        return True


class _QFileInfo:
    def __init__(self, directory: _QDir, name: str) -> None:
        self._path = os.path.join(directory.path, name)

    def absoluteFilePath(self) -> str:
        return os.path.abspath(self._path)


class _QLocale:
    English, UnitedStates = 31, 225

    def __init__(self, *args) -> None:
        pass

    def toString(self, dateTime: float, fmt: str) -> str:
        """Only the format slicer.util.tempDirectory asks for, ``yyyy-MM-dd_hh+mm+ss.zzz``."""
        stamp = time.strftime("%Y-%m-%d_%H+%M+%S", time.localtime(dateTime))
        return f"{stamp}.{int((dateTime % 1) * 1000):03d}"


class _QApplication:
    overrides: List[int] = []

    @classmethod
    def setOverrideCursor(cls, cursor: int) -> None:
        cls.overrides.append(cursor)

    @classmethod
    def restoreOverrideCursor(cls) -> None:
        cls.overrides.pop()

    @classmethod
    def overrideCursor(cls) -> Optional[int]:
        return cls.overrides[-1] if cls.overrides else None


class _MessageBox:
    """QMessageBox's button and icon values (qmessagebox.h)."""

    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    Question, Critical = 4, 3


class ctkMessageBox:
    """CTK Libs/Widgets/ctkMessageBox.h: records ``text`` and ``windowTitle``; ``exec_`` answers :data:`answers`."""

    def __init__(self, parent=None) -> None:
        self.text, self.windowTitle, self.standardButtons = "", "", _MessageBox.Ok

    def deleteLater(self) -> None:
        pass

    def exec_(self) -> int:
        calls.append({"function": "messageBox", "text": self.text, "windowTitle": self.windowTitle})
        if self.standardButtons & _MessageBox.Cancel:
            return _MessageBox.Ok if answers["confirm"] else _MessageBox.Cancel
        return _MessageBox.Ok


def _qtModules() -> Dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    qt.QTimer = types.SimpleNamespace(singleShot=_singleShot)
    qt.QDir, qt.QFileInfo, qt.QLocale, qt.QApplication, qt.QMessageBox = (
        _QDir, _QFileInfo, _QLocale, _QApplication, _MessageBox)
    qt.QDateTime = types.SimpleNamespace(currentDateTime=time.time)
    qt.Qt = types.SimpleNamespace(WaitCursor=16, ToolTipRole=3)
    ctk = types.ModuleType("ctk")
    ctk.ctkMessageBox = ctkMessageBox
    return {"qt": qt, "ctk": ctk}


# --- slicer.app -----------------------------------------------------------------------------------------------


class SliceWidget:
    """qMRMLSliceWidget: its slice node and slice logic."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def mrmlSliceNode(self):
        return self._logic.GetSliceNode()

    def sliceLogic(self):
        return self._logic


class LayoutManager:
    """qSlicerLayoutManager over a real vtkMRMLLayoutLogic, with a real vtkMRMLSliceLogic per slice view."""

    def __init__(self, slicer, appLogic, scene) -> None:
        import vtk

        self._slicer, self._appLogic, self._scene = slicer, appLogic, scene
        self._sliceLogics = vtk.vtkCollection()
        self._widgets: Dict[str, SliceWidget] = {}
        self._layoutLogic = slicer.vtkMRMLLayoutLogic()
        self._layoutLogic.SetMRMLScene(scene)
        self.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
        appLogic.SetSliceLogics(self._sliceLogics)

    def _addSliceWidgets(self) -> None:
        """qMRMLSliceWidget: one slice logic per slice node of a layout (vtkMRMLLayoutLogic creates the nodes of the
        views a layout names, custom layouts included)."""
        for index in range(self._scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            sliceNode = self._scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            name = sliceNode.GetLayoutName()
            if name in self._widgets:
                continue
            logic = self._slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self._appLogic)
            logic.SetMRMLScene(self._scene)
            logic.SetSliceNode(sliceNode)
            self._sliceLogics.AddItem(logic)
            self._widgets[name] = SliceWidget(logic)

    @property
    def layout(self) -> int:
        return self._layoutLogic.GetLayoutNode().GetViewArrangement()

    def setLayout(self, layout: int) -> None:
        self._layoutLogic.GetLayoutNode().SetViewArrangement(int(layout))
        self._addSliceWidgets()

    def sliceViewNames(self) -> Tuple[str, ...]:
        return tuple(self._widgets)

    def sliceWidget(self, name: str) -> Optional[SliceWidget]:
        return self._widgets.get(name)

    def mrmlSliceLogics(self):
        return self._sliceLogics

    def resetThreeDViews(self) -> None:
        calls.append({"function": "resetThreeDViews"})


class IOManager:
    """qSlicerCoreIOManager for volumes: qSlicerVolumesReader.cxx ``load`` and qSlicerNodeWriter.cxx ``write``."""

    def __init__(self, scene, appLogic, volumesLogic) -> None:
        self._scene, self._appLogic, self._volumes = scene, appLogic, volumesLogic

    def fileType(self, fileName: str) -> str:
        return "VolumeFile"

    def fileWriterFileType(self, node) -> str:
        return "VolumeFile" if node.IsA("vtkMRMLVolumeNode") else "NoFile"

    def loadNodes(self, fileType: str, properties: Dict[str, Any], loaded, userMessages) -> bool:
        if fileType != "VolumeFile":
            return False
        fileName = str(properties["fileName"])
        name = properties.get("name") or os.path.basename(fileName).split(".")[0]  # QFileInfo::baseName
        options = 0
        for bit, key in ((0x1, "labelmap"), (0x2, "center"), (0x4, "singleFile"), (0x8, "autoWindowLevel"),
                         (0x10, "discardOrientation")):
            options |= bit if properties.get(key) else 0
        node = self._volumes.AddArchetypeVolume(fileName, name, options)
        if node is None:
            return False
        if properties.get("colorNodeID"):
            node.GetVolumeDisplayNode().SetAndObserveColorNodeID(properties["colorNodeID"])
        if properties.get("show", True):  # propagateVolumeSelection defaults to true
            selection = self._appLogic.GetSelectionNode()
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                selection.SetActiveLabelVolumeID(node.GetID())
            else:
                selection.SetActiveVolumeID(node.GetID())
            self._appLogic.PropagateVolumeSelection()
        loaded.AddItem(node)
        return True

    def saveNodes(self, fileType: str, properties: Dict[str, Any], userMessages) -> bool:
        node = self._scene.GetNodeByID(properties["nodeID"])
        if fileType != "VolumeFile" or node is None:
            return False
        storage = node.GetStorageNode()
        if storage is None:  # qSlicerCoreIOManager::createAndAddDefaultStorageNode
            storage = node.CreateDefaultStorageNode()
            self._scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(properties["fileName"]))
        storage.SetURI(None)
        if "useCompression" in properties:
            storage.SetUseCompression(int(properties["useCompression"]))
        return bool(storage.WriteData(node))


class Application:
    """slicer.app (qSlicerApplication.h / qSlicerCoreApplication.h)."""

    applicationName = "3D Slicer"

    def __init__(self, major: int, minor: int, temporaryPath: str, appLogic, ioManager,
                 layoutManager: Optional[LayoutManager]) -> None:
        self.majorVersion, self.minorVersion = major, minor
        self.temporaryPath = temporaryPath
        self._appLogic, self._ioManager, self._layoutManager = appLogic, ioManager, layoutManager

    def layoutManager(self) -> Optional[LayoutManager]:
        return self._layoutManager

    def coreIOManager(self) -> IOManager:
        return self._ioManager

    def applicationLogic(self):
        return self._appLogic

    def testingEnabled(self) -> bool:
        return False

    def topLevelWidgets(self) -> list:
        return []

    def processEvents(self) -> None:
        processEvents()


# --- modules the module imports -------------------------------------------------------------------------------


class DicomDatabase:
    """ctkDICOMDatabase.h: ``isOpen`` and ``fileForInstance`` ("" for an unknown UID, like the real one)."""

    def __init__(self) -> None:
        self.files: Dict[str, str] = {}
        self.isOpen = True

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.files.get(sopInstanceUID, "")


def _importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False) -> bool:
    """Modules/Scripted/DICOMLib/DICOMUtils.py importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False)."""
    calls.append({"function": "importDicom", "folder": str(dicomDataDir), "copyFiles": bool(copyFiles)})
    return True


def _pipInstall(version: Tuple[int, int]) -> Callable[..., None]:
    """Base/Python/slicer/packaging.py pip_install(requirements, **kwargs) from 5.11; util.pip_install(requirements)
    before (v5.10.0), which takes no keyword arguments."""

    def pip_install(requirements, **kwargs) -> None:
        if version < (5, 11) and kwargs:
            raise TypeError("pip_install() takes 1 positional argument but keyword arguments were given")
        calls.append({"function": "pip_install", "requirements": requirements, **kwargs})

    return pip_install


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        pass


class _Logic(_Base):
    def getParameterNode(self):
        """ScriptedLoadableModuleLogic.getParameterNode: the module's singleton vtkMRMLScriptedModuleNode."""
        import slicer

        name = type(self).__name__[: -len("Logic")]
        node = slicer.mrmlScene.GetSingletonNode(name, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(name)
            node.SetName(name)
            node = slicer.mrmlScene.AddNode(node)
        return node


_parameterValues: Dict[str, Dict[str, Any]] = {}
"""Typed values behind each parameter node (by node ID); the real wrapper serialises them into the node."""


def _parameterNodeWrapper(cls: type) -> type:
    """parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/wrapper.py): a class over a parameter node whose
    annotated fields read and write the node's parameters; a field the node lacks starts at the class default."""
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    def __init__(self, node) -> None:
        object.__setattr__(self, "parameterNode", node)
        values = _parameterValues.setdefault(node.GetID(), {})
        for name, value in defaults.items():
            values.setdefault(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in defaults:
            return _parameterValues[self.parameterNode.GetID()][name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in defaults:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        _parameterValues[self.parameterNode.GetID()][name] = value
        self.parameterNode.Modified()

    members = {"__init__": __init__, "__getattr__": __getattr__, "__setattr__": __setattr__, "__doc__": cls.__doc__}
    return type(cls.__name__, (), members)


class _ModuleTest(unittest.TestCase):
    """ScriptedLoadableModuleTest (Base/Python/slicer/ScriptedLoadableModule.py), a unittest.TestCase; ``delayDisplay``
    goes through slicer.util.delayDisplay with no delay, which logs and processes events."""

    def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
        import slicer

        slicer.util.delayDisplay(message, 0)


class _Validator:
    """Choice / WithinRange of Base/Python/slicer/parameterNodeWrapper/validators.py (arguments kept only)."""

    def __init__(self, *args) -> None:
        self.args = args


def _slicerModules(version: Tuple[int, int]) -> Dict[str, types.ModuleType]:
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (_Base,), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (_Base,), {})
    scripted.ScriptedLoadableModuleLogic = _Logic
    scripted.ScriptedLoadableModuleTest = _ModuleTest
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _parameterNodeWrapper
    wrapper.Choice = type("Choice", (_Validator,), {})
    wrapper.WithinRange = type("WithinRange", (_Validator,), {})
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = _pipInstall(version)
    dicomLib = types.ModuleType("DICOMLib")
    dicomLib.DICOMUtils = types.ModuleType("DICOMLib.DICOMUtils")
    dicomLib.DICOMUtils.importDicom = _importDicom
    return {"slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper,
            "slicer.packaging": packaging, "DICOMLib": dicomLib, "DICOMLib.DICOMUtils": dicomLib.DICOMUtils}


# --- the scene and its logics -----------------------------------------------------------------------------------


def _logics(slicer, scene, withViews: bool):
    """Application logic and module logics wired as qSlicerCoreApplication and the module plugins wire them."""
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.SetHomeDirectory(str(SHARE_DIR.parent))
    appLogic.SetShareDirectory(SHARE_DIR.name)  # colour files: <home>/<share>/ColorFiles
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    logics = {  # by Slicer module name, under which the logics find each other (e.g. Volumes asks for Colors)
        "Colors": slicer.vtkSlicerColorLogic(),
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "VolumeRendering": slicer.vtkSlicerVolumeRenderingLogic(),
        "Tables": slicer.vtkSlicerTablesLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(name, logic)
    logics["Colors"].AddDefaultColorNodes()
    logics["VolumeRendering"].SetModuleShareDirectory(str(SHARE_DIR))  # presets.xml
    layoutManager = LayoutManager(slicer, appLogic, scene) if withViews else None
    return appLogic, logics, layoutManager


def install(monkeypatch, temporaryPath: str, major: int = 5, minor: int = 12, withViews: bool = False):
    """Complete the real ``slicer`` package for one test (``monkeypatch`` undoes it); return ``slicer``.

    ``withViews``: a layout manager with three slice views, like the Slicer window; without, like
    ``Slicer --no-main-window`` (``slicer.app.layoutManager()`` is None).
    """
    calls.clear()
    answers["confirm"] = True
    _timers.clear()
    _parameterValues.clear()
    for name, module in {**_qtModules(), **_slicerModules((major, minor))}.items():
        monkeypatch.setitem(sys.modules, name, module)
    import slicer
    import slicer.util  # noqa: F401 - Slicer's own util.py, shipped by slicer-core

    scene = slicer.vtkMRMLScene()
    appLogic, logics, layoutManager = _logics(slicer, scene, withViews)
    ioManager = IOManager(scene, appLogic, logics["Volumes"])
    members = {
        "mrmlScene": scene,
        "app": Application(major, minor, temporaryPath, appLogic, ioManager, layoutManager),
        "modules": types.SimpleNamespace(**{
            name.lower(): types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in logics.items()}),
        "dicomDatabase": DicomDatabase(),
    }
    for name in ("i18n", "ScriptedLoadableModule", "parameterNodeWrapper", "packaging"):
        members[name] = sys.modules[f"slicer.{name}"]
    for name, value in members.items():
        monkeypatch.setattr(slicer, name, value, raising=False)
    return slicer


def volumeFromFile(slicer, fileName: Optional[str], name: str = ""):
    """A volume node whose storage node names ``fileName`` but holds no voxels (a file moved after loading)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if fileName:
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(fileName)
        node.SetAndObserveStorageNodeID(storage.GetID())
    return node

