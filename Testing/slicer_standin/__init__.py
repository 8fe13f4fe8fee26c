"""A tiny pure-Python stand-in for the parts of Slicer that X2CTRecon's *logic* touches.

It lets pytest run X2CTReconLogic without Slicer: module files import ``slicer``, ``vtk`` and the
template's base classes, and the logic calls a handful of node methods and ``slicer.util``
functions. Only those are provided, with the signatures of Slicer's source
(Base/Python/slicer/util.py, Libs/MRML/Core/vtkMRMLNode.h, vtkMRMLStorableNode.h,
vtkMRMLStorageNode.h, vtkMRMLVolumeNode.h). No GUI, no VTK: matrices are numpy arrays.

Use :func:`install` with pytest's ``monkeypatch`` so that the fake modules vanish after the test.
"""

from __future__ import annotations

import types
from typing import Dict, Optional

import numpy as np


class StorageNode:
    """vtkMRMLStorageNode: only the file name."""

    def __init__(self, fileName: Optional[str]) -> None:
        self._fileName = fileName

    def GetFileName(self) -> Optional[str]:
        return self._fileName


class ScalarVolumeNode:
    """vtkMRMLScalarVolumeNode: name, attributes, storage node, voxels and IJKToRAS (numpy 4x4)."""

    def __init__(self, name: str = "", fileName: Optional[str] = None) -> None:
        self._name = name
        self._attributes: Dict[str, str] = {}
        self._storageNode = StorageNode(fileName) if fileName else None
        self.voxels: Optional[np.ndarray] = None
        self.ijkToRAS = np.eye(4)

    def GetName(self) -> str:
        return self._name

    def SetAttribute(self, name: str, value: str) -> None:
        self._attributes[name] = value

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    def GetStorageNode(self) -> Optional[StorageNode]:
        return self._storageNode

    def SetIJKToRASMatrix(self, matrix) -> None:
        self.ijkToRAS = np.array(matrix, dtype=float)


class DicomDatabase:
    """ctkDICOMDatabase: fileForInstance returns "" for an unknown UID, like the real one."""

    def __init__(self, files: Optional[Dict[str, str]] = None) -> None:
        self.files = dict(files or {})

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.files.get(sopInstanceUID, "")


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        pass


class _Logic(_Base):
    def getParameterNode(self):
        return None


class _VTKObservationMixin:
    def __init__(self) -> None:
        pass


class _Choice:
    def __init__(self, choices) -> None:
        self.choices = choices


def _addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    node = ScalarVolumeNode(name or "")
    if ijkToRAS is not None:
        node.SetIJKToRASMatrix(ijkToRAS)
    node.voxels = np.array(narray, copy=True)
    return node


def make_modules() -> Dict[str, types.ModuleType]:
    """Fresh fake modules keyed by import name."""
    slicer = types.ModuleType("slicer")
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = _VTKObservationMixin
    util.addVolumeFromArray = _addVolumeFromArray
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (_Base,), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (_Base,), {})
    scripted.ScriptedLoadableModuleLogic = _Logic
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (_Base,), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = _Choice
    slicer.util = util
    slicer.i18n = i18n
    slicer.ScriptedLoadableModule = scripted
    slicer.parameterNodeWrapper = wrapper
    slicer.vtkMRMLScalarVolumeNode = ScalarVolumeNode
    slicer.dicomDatabase = DicomDatabase()
    vtk = types.ModuleType("vtk")
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)
    return {
        "slicer": slicer,
        "slicer.util": util,
        "slicer.i18n": i18n,
        "slicer.ScriptedLoadableModule": scripted,
        "slicer.parameterNodeWrapper": wrapper,
        "vtk": vtk,
    }


def install(monkeypatch) -> types.ModuleType:
    """Put the fake modules in ``sys.modules`` for one test; return the fake ``slicer``."""
    import sys

    modules = make_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules["slicer"]
