"""``slicer.util`` of the stand-in: the functions X2CTRecon calls, with the signatures of
Base/Python/slicer/util.py (Slicer main; the same at v5.8.1 unless noted). Bodies are our own.

Dialogs and pip are recorded in ``calls`` instead of shown or run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import vtk
from vtk.util import numpy_support

calls: List[Dict[str, Any]] = []
"""Every dialog, pip_install and view reset, in order: {"function": name, **arguments}."""

answers: Dict[str, bool] = {"confirmOkCancelDisplay": True}
"""What the confirm dialogs answer."""

temporaryRoot: Dict[str, str] = {"path": tempfile.gettempdir()}
"""Where tempDirectory creates folders (slicer.app.temporaryPath in Slicer)."""


def _slicer():
    import slicer  # the stand-in module installed in sys.modules

    return slicer


def arrayFromVTKMatrix(vmatrix) -> np.ndarray:
    """util.arrayFromVTKMatrix(vmatrix): a copy of a vtkMatrix4x4 as a 4x4 array."""
    if not isinstance(vmatrix, vtk.vtkMatrix4x4):
        raise RuntimeError("Input must be vtk.vtkMatrix3x3 or vtk.vtkMatrix4x4")
    return np.array([[vmatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtkMatrixFromArray(narray) -> vtk.vtkMatrix4x4:
    """util.vtkMatrixFromArray(narray) for 4x4 arrays."""
    narray = np.asarray(narray, dtype=float)
    if narray.shape != (4, 4):
        raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape) + " expected (4, 4)")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, narray[r, c])
    return matrix


def arrayFromVolume(volumeNode) -> np.ndarray:
    """util.arrayFromVolume(volumeNode): a (K, J, I) view of the node's vtkImageData scalars."""
    image = volumeNode.GetImageData()
    shape = tuple(reversed(image.GetDimensions()))
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def updateVolumeFromArray(volumeNode, narray) -> None:
    """util.updateVolumeFromArray(volumeNode, narray): deep copy; 2-D input becomes one slice."""
    narray = np.asarray(narray)
    if narray.ndim == 2:
        narray = narray[None]
    if narray.ndim != 3:
        raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape))
    if numpy_support.get_vtk_array_type(narray.dtype) == vtk.VTK_LONG_LONG:
        raise RuntimeError("Unsupported numpy array type: long long")
    image = volumeNode.GetImageData()
    if image is None:
        image = vtk.vtkImageData()
        volumeNode.SetAndObserveImageData(image)
    image.SetDimensions(tuple(reversed(narray.shape)))
    image.AllocateScalars(numpy_support.get_vtk_array_type(narray.dtype), 1)
    arrayFromVolume(volumeNode)[:] = narray
    volumeNode.StorableModified()
    volumeNode.Modified()


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    """util.addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None)."""
    volumeNode = _slicer().mrmlScene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    if ijkToRAS is not None:
        if not isinstance(ijkToRAS, vtk.vtkMatrix4x4):
            ijkToRAS = vtkMatrixFromArray(ijkToRAS)
        volumeNode.SetIJKToRASMatrix(ijkToRAS)
    updateVolumeFromArray(volumeNode, narray)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def loadVolume(filename, properties={}, returnNode=False):  # noqa: B006 - Slicer's own signature
    """util.loadVolume(filename, properties={}, returnNode=False), reading like Slicer's ITK archetype reader.

    Slicer reads with the file's native orientation (vtkMRMLVolumeArchetypeStorageNode.cxx calls
    SetDesiredCoordinateOrientationToNative), takes ITK's buffer as is
    (vtkITKArchetypeImageSeriesScalarReader.cxx) and turns ITK's LPS geometry into IJKToRAS by
    negating the first two rows (vtkITKArchetypeImageSeriesReader.cxx). Done here with SimpleITK.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(filename))
    except RuntimeError as err:
        raise RuntimeError("Failed to load volume: " + str(filename)) from err
    dimension = image.GetDimension()
    ijkToLPS = np.eye(4)
    direction = np.reshape(image.GetDirection(), (dimension, dimension))
    for axis in range(dimension):
        ijkToLPS[:dimension, axis] = direction[:, axis] * image.GetSpacing()[axis]
    ijkToLPS[:dimension, 3] = image.GetOrigin()
    ijkToRAS = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijkToLPS
    voxels = sitk.GetArrayFromImage(image)
    if voxels.ndim == dimension + 1:  # RGB: Slicer makes a vector volume, which the module does not take
        voxels = voxels[..., 0]
    node = addVolumeFromArray(voxels, ijkToRAS, properties.get("name") or Path(filename).name.split(".")[0])
    storage = _slicer().mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(filename))
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def saveNode(node, filename, properties={}) -> bool:  # noqa: B006 - Slicer's own signature
    """util.saveNode(node, filename, properties={}): volumes through SimpleITK (LPS), tables as CSV."""
    import SimpleITK as sitk

    if node.IsA("vtkMRMLTableNode"):
        table = node
        lines = [",".join(table.GetColumnName(c) for c in range(table.GetNumberOfColumns()))]
        lines += [
            ",".join(table.GetCellText(r, c) for c in range(table.GetNumberOfColumns()))
            for r in range(table.GetNumberOfRows())
        ]
        Path(filename).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return True
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijkToLPS = np.diag([-1.0, -1.0, 1.0, 1.0]) @ arrayFromVTKMatrix(matrix)
    spacing = np.linalg.norm(ijkToLPS[:3, :3], axis=0)
    image = sitk.GetImageFromArray(arrayFromVolume(node))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((ijkToLPS[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(ijkToLPS[:3, 3]))
    sitk.WriteImage(image, str(filename), useCompression=True)
    return True


def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    """util.setSliceViewerLayers (same signature 5.6 to main): every vtkMRMLSliceCompositeNode gets the layers."""
    slicer = _slicer()

    def nodeID(nodeOrID):
        return nodeOrID.GetID() if isinstance(nodeOrID, slicer.vtkMRMLNode) else nodeOrID

    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if background != "keep-current":
            composite.SetBackgroundVolumeID(nodeID(background))
        if foreground != "keep-current":
            composite.SetForegroundVolumeID(nodeID(foreground))
        if foregroundOpacity is not None:
            composite.SetForegroundOpacity(foregroundOpacity)
        if label != "keep-current":
            composite.SetLabelVolumeID(nodeID(label))
        if labelOpacity is not None:
            composite.SetLabelOpacity(labelOpacity)
    layoutManager = slicer.app.layoutManager()
    if rotateToVolumePlane and background != "keep-current":
        layoutManager.rotatedTo = nodeID(background)  # Slicer dereferences the layout manager here too
    if fit and layoutManager is not None:
        layoutManager.fitted += 1


def resetThreeDViews() -> None:
    calls.append({"function": "resetThreeDViews"})


def tempDirectory(key="__SlicerTemp__", tempDir=None, includeDateTime=True) -> str:
    """util.tempDirectory: a new folder under the application's temporary path."""
    return tempfile.mkdtemp(prefix=key + "-", dir=tempDir or temporaryRoot["path"])


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs) -> None:
    calls.append({"function": "errorDisplay", "text": text, "windowTitle": windowTitle})


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs) -> bool:
    calls.append({"function": "confirmOkCancelDisplay", "text": text, "windowTitle": windowTitle})
    return answers["confirmOkCancelDisplay"]


def pip_install(requirements, **kwargs) -> None:
    """util.pip_install: ``(requirements)`` up to 5.10, ``(requirements, **kwargs)`` from 5.12."""
    slicer = _slicer()
    if (slicer.app.majorVersion, slicer.app.minorVersion) < (5, 11) and kwargs:
        raise TypeError("pip_install() takes 1 positional argument but keyword arguments were given")
    calls.append({"function": "pip_install", "requirements": requirements, **kwargs})


class VTKObservationMixin:
    """util.VTKObservationMixin (only construction is needed by the logic tests)."""

    def __init__(self) -> None:
        self.observations: list = []


class WaitCursor:
    """util.WaitCursor context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None
