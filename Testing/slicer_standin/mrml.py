"""MRML nodes and scene of the stand-in: Slicer's class and method names, real VTK data objects.

Each class cites the Slicer header it mirrors (paths in Slicer/Slicer). Only the methods X2CTRecon
calls exist; a call to anything else fails with AttributeError, which is the point.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import vtk


class vtkMRMLNode:
    """Libs/MRML/Core/vtkMRMLNode.h: id, name, attributes, Copy, Modified/InvokeEvent."""

    classNames = ("vtkMRMLNode",)
    singleton = False

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._name = ""
        self._attributes: Dict[str, str] = {}
        self.scene: Optional[vtkMRMLScene] = None

    def GetClassName(self) -> str:
        return self.classNames[0]

    def IsA(self, className: str) -> bool:
        return className in self.classNames

    def GetID(self) -> Optional[str]:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def SetAttribute(self, name: str, value: str) -> None:
        self._attributes[name] = value

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    def Modified(self) -> None:
        pass

    def InvokeEvent(self, event, callData=None) -> None:
        pass


class vtkMRMLStorageNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLStorageNode.h: the file name only."""

    classNames = ("vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLStorageNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self._fileName: Optional[str] = None

    def SetFileName(self, fileName: str) -> None:
        self._fileName = fileName

    def GetFileName(self) -> Optional[str]:
        return self._fileName


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h (+ vtkMRMLDisplayNode.h for colour and visibility)."""

    classNames = ("vtkMRMLScalarVolumeDisplayNode", "vtkMRMLVolumeDisplayNode", "vtkMRMLDisplayNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self._colorNodeID = "vtkMRMLColorTableNodeGrey"
        self._autoWindowLevel = 1
        self._window, self._level = 256.0, 128.0
        self._applyThreshold = 0
        self._lower, self._upper = -1e30, 1e30
        self._visibility = 1

    def SetAndObserveColorNodeID(self, colorNodeID: str) -> None:
        self._colorNodeID = colorNodeID

    def GetColorNodeID(self) -> str:
        return self._colorNodeID

    def SetAutoWindowLevel(self, value: int) -> None:
        self._autoWindowLevel = int(value)

    def GetAutoWindowLevel(self) -> int:
        return self._autoWindowLevel

    def SetWindowLevel(self, window: float, level: float) -> None:
        self._window, self._level = float(window), float(level)

    def SetWindowLevelMinMax(self, minimum: float, maximum: float) -> None:
        self.SetWindowLevel(maximum - minimum, 0.5 * (maximum + minimum))

    def GetWindow(self) -> float:
        return self._window

    def GetLevel(self) -> float:
        return self._level

    def SetApplyThreshold(self, value: int) -> None:
        self._applyThreshold = int(value)

    def GetApplyThreshold(self) -> int:
        return self._applyThreshold

    def SetThreshold(self, lower: float, upper: float) -> None:
        self._lower, self._upper = float(lower), float(upper)

    def SetLowerThreshold(self, lower: float) -> None:
        self._lower = float(lower)

    def GetLowerThreshold(self) -> float:
        return self._lower

    def GetUpperThreshold(self) -> float:
        return self._upper

    def SetVisibility(self, visible: int) -> None:
        self._visibility = int(visible)


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLVolumeNode.h, vtkMRMLScalarVolumeNode.h, vtkMRMLStorableNode.h, vtkMRMLTransformableNode.h.

    Voxels live in a real vtkImageData; IJKToRAS is a real vtkMatrix4x4 (copied in and out, as the
    C++ methods do).
    """

    classNames = ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeNode", "vtkMRMLNode")
    ImageDataModifiedEvent = 18001  # vtkMRMLVolumeNode.h

    def __init__(self) -> None:
        super().__init__()
        self._imageData: Optional[vtk.vtkImageData] = None
        self._ijkToRAS = vtk.vtkMatrix4x4()
        self._displayNodeID: Optional[str] = None
        self._storageNodeID: Optional[str] = None
        self._transformNodeID: Optional[str] = None

    def GetImageData(self) -> Optional[vtk.vtkImageData]:
        return self._imageData

    def SetAndObserveImageData(self, imageData: vtk.vtkImageData) -> None:
        self._imageData = imageData

    def SetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._ijkToRAS.DeepCopy(matrix)

    def GetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.DeepCopy(self._ijkToRAS)

    def CreateDefaultDisplayNodes(self) -> None:
        if self._displayNodeID is None:
            display = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
            self._displayNodeID = display.GetID()

    def GetDisplayNode(self) -> Optional[vtkMRMLScalarVolumeDisplayNode]:
        return self.scene.GetNodeByID(self._displayNodeID) if self._displayNodeID else None

    GetScalarVolumeDisplayNode = GetDisplayNode

    def SetAndObserveStorageNodeID(self, storageNodeID: str) -> None:
        self._storageNodeID = storageNodeID

    def GetStorageNode(self) -> Optional[vtkMRMLStorageNode]:
        return self.scene.GetNodeByID(self._storageNodeID) if self._storageNodeID else None

    def SetAndObserveTransformNodeID(self, transformNodeID: Optional[str]) -> bool:
        self._transformNodeID = transformNodeID
        return True

    def GetTransformNodeID(self) -> Optional[str]:
        return self._transformNodeID

    def StorableModified(self) -> None:
        pass


class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLSliceCompositeNode.h: the layers of one slice view."""

    classNames = ("vtkMRMLSliceCompositeNode", "vtkMRMLNode")
    singleton = True

    def __init__(self) -> None:
        super().__init__()
        self._background: Optional[str] = None
        self._foreground: Optional[str] = None
        self._label: Optional[str] = None
        self._foregroundOpacity = 0.0
        self._labelOpacity = 1.0

    def SetBackgroundVolumeID(self, nodeID: Optional[str]) -> None:
        self._background = nodeID

    def GetBackgroundVolumeID(self) -> Optional[str]:
        return self._background

    def SetForegroundVolumeID(self, nodeID: Optional[str]) -> None:
        self._foreground = nodeID

    def GetForegroundVolumeID(self) -> Optional[str]:
        return self._foreground

    def SetLabelVolumeID(self, nodeID: Optional[str]) -> None:
        self._label = nodeID

    def SetForegroundOpacity(self, opacity: float) -> None:
        self._foregroundOpacity = float(opacity)

    def GetForegroundOpacity(self) -> float:
        return self._foregroundOpacity

    def SetLabelOpacity(self, opacity: float) -> None:
        self._labelOpacity = float(opacity)


class vtkMRMLTableNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLTableNode.h, backed by a real vtkTable."""

    classNames = ("vtkMRMLTableNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self._table = vtk.vtkTable()
        self._locked = False

    def GetTable(self) -> vtk.vtkTable:
        return self._table

    def AddColumn(self, column=None):
        column = column if column is not None else vtk.vtkStringArray()
        column.SetNumberOfTuples(self._table.GetNumberOfRows())  # the C++ method matches the row count
        self._table.AddColumn(column)
        return column

    def AddEmptyRow(self) -> int:
        for index in range(self._table.GetNumberOfColumns()):
            column = self._table.GetColumn(index)
            column.InsertNextValue("" if isinstance(column, vtk.vtkStringArray) else 0)
        self._table.Modified()
        return self._table.GetNumberOfRows() - 1

    def SetCellText(self, rowIndex: int, columnIndex: int, text: str) -> bool:
        if not (0 <= rowIndex < self.GetNumberOfRows() and 0 <= columnIndex < self.GetNumberOfColumns()):
            return False
        self._table.SetValue(rowIndex, columnIndex, vtk.vtkVariant(text))
        return True

    def GetCellText(self, rowIndex: int, columnIndex: int) -> str:
        if not (0 <= rowIndex < self.GetNumberOfRows() and 0 <= columnIndex < self.GetNumberOfColumns()):
            return ""
        return self._table.GetValue(rowIndex, columnIndex).ToString()

    def GetNumberOfRows(self) -> int:
        return self._table.GetNumberOfRows()

    def GetNumberOfColumns(self) -> int:
        return self._table.GetNumberOfColumns()

    def GetColumnName(self, columnIndex: int) -> str:
        return self._table.GetColumnName(columnIndex) or ""

    def SetLocked(self, locked: bool) -> None:
        self._locked = bool(locked)

    def GetLocked(self) -> bool:
        return self._locked


class vtkMRMLColorTableNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLColorTableNode.h; the ids follow Libs/MRML/Logic/vtkMRMLColorLogic.h."""

    classNames = ("vtkMRMLColorTableNode", "vtkMRMLColorNode", "vtkMRMLNode")
    singleton = True


class vtkMRMLVolumePropertyNode(vtkMRMLNode):
    """Modules/Loadable/VolumeRendering/MRML/vtkMRMLVolumePropertyNode.h: Copy takes over a preset."""

    classNames = ("vtkMRMLVolumePropertyNode", "vtkMRMLNode")

    def Copy(self, node: vtkMRMLNode) -> None:
        self.SetName(node.GetName())


class vtkMRMLVolumeRenderingDisplayNode(vtkMRMLNode):
    """Modules/Loadable/VolumeRendering/MRML/vtkMRMLVolumeRenderingDisplayNode.h."""

    classNames = ("vtkMRMLGPURayCastVolumeRenderingDisplayNode", "vtkMRMLVolumeRenderingDisplayNode", "vtkMRMLNode")

    def __init__(self) -> None:
        super().__init__()
        self.volumeNodeID: Optional[str] = None
        self._propertyNode = vtkMRMLVolumePropertyNode()
        self._visibility = 0

    def GetVolumePropertyNode(self) -> vtkMRMLVolumePropertyNode:
        return self._propertyNode

    def SetVisibility(self, visible: int) -> None:
        self._visibility = int(visible)

    def GetVisibility(self) -> int:
        return self._visibility


NODE_CLASSES = {
    cls.classNames[0]: cls
    for cls in (
        vtkMRMLScalarVolumeNode,
        vtkMRMLScalarVolumeDisplayNode,
        vtkMRMLStorageNode,
        vtkMRMLSliceCompositeNode,
        vtkMRMLTableNode,
        vtkMRMLColorTableNode,
        vtkMRMLVolumeRenderingDisplayNode,
    )
}


class vtkMRMLScene:
    """Libs/MRML/Core/vtkMRMLScene.h: ids are class name + counter (GenerateUniqueID); Clear keeps singletons."""

    StartCloseEvent = 66003
    EndCloseEvent = 66004

    def __init__(self) -> None:
        self._nodes: List[vtkMRMLNode] = []
        self._counters: Dict[str, int] = {}

    def AddNode(self, node: vtkMRMLNode) -> vtkMRMLNode:
        className = node.GetClassName()
        self._counters[className] = self._counters.get(className, 0) + 1
        node._id = node._id or f"{className}{self._counters[className]}"
        node.scene = self
        self._nodes.append(node)
        return node

    def AddNewNodeByClass(self, className: str, nodeBaseName: str = "") -> vtkMRMLNode:
        node = NODE_CLASSES[className]()
        node.SetName(nodeBaseName)
        return self.AddNode(node)

    def GetNodeByID(self, nodeID: Optional[str]) -> Optional[vtkMRMLNode]:
        return next((node for node in self._nodes if nodeID is not None and node.GetID() == nodeID), None)

    def _byClass(self, className: str) -> List[vtkMRMLNode]:
        return [node for node in self._nodes if node.IsA(className)]

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return len(self._byClass(className))

    def GetNthNodeByClass(self, n: int, className: str) -> Optional[vtkMRMLNode]:
        nodes = self._byClass(className)
        return nodes[n] if 0 <= n < len(nodes) else None

    def GetFirstNodeByClass(self, className: str) -> Optional[vtkMRMLNode]:
        return self.GetNthNodeByClass(0, className)

    def RemoveNode(self, node: vtkMRMLNode) -> None:
        self._nodes.remove(node)

    def Clear(self, removeSingletons: int = 0) -> None:
        self._nodes = [node for node in self._nodes if node.singleton and not removeSingletons]
