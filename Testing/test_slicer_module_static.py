"""Checks of the X2CTRecon Slicer module that run without Slicer.

They read the module's Python, .ui and CMake files as text/AST and compare them with facts taken
from Slicer's source: every ``slicer.util`` name must exist (Testing/data/slicer_util_functions.txt
lists the top-level functions of Base/Python/slicer/util.py), the template's class names and CMake
calls must be present, the code must parse as Python 3.9 (Slicer 5.8), every widget the code
touches must exist in the .ui, and every other Slicer/VTK method the module calls must be listed in
the README's Slicer API table. The pure helpers in X2CTReconLib are tested numerically; the logic
itself runs on Slicer's real MRML (slicer-core) in Testing/test_slicer_logic.py.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "X2CTRecon"
MODULE_FILE = MODULE_DIR / "X2CTRecon.py"
LIB_DIR = MODULE_DIR / "X2CTReconLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "X2CTRecon.ui"
BATCH_SCRIPT = MODULE_DIR / "Scripts" / "x2ct_batch.py"
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
UTIL_NAMES_FILE = REPO / "Testing" / "data" / "slicer_util_functions.txt"

REQUIRED_CLASSES = ("X2CTRecon", "X2CTReconWidget", "X2CTReconLogic", "X2CTReconTest")
BASE_CLASSES = {
    "X2CTRecon": "ScriptedLoadableModule",
    "X2CTReconWidget": "ScriptedLoadableModuleWidget",
    "X2CTReconLogic": "ScriptedLoadableModuleLogic",
    "X2CTReconTest": "ScriptedLoadableModuleTest",
}

# Classes defined in Base/Python/slicer/util.py (Slicer v5.8.1 and main); the names file lists only `def`s.
SLICER_UTIL_CLASSES = {
    "MRMLNodeNotFoundException",
    "NodeModify",
    "RenderBlocker",
    "VTKObservationMixin",
    "WaitCursor",
    "MessageDialog",
    "chdir",
}


def module_sources() -> List[Path]:
    return [MODULE_FILE, *sorted(LIB_DIR.glob("*.py")), BATCH_SCRIPT]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --- (a) slicer.util names -------------------------------------------------------------------------


def slicer_util_uses(tree: ast.AST) -> Iterator[Tuple[str, int]]:
    """Yield (name, line) for every ``slicer.util.<name>`` use and every ``from slicer.util import <name>``."""
    aliases: Set[str] = set()  # names bound to the slicer.util module itself (import slicer.util as su)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname for a in node.names if a.name == "slicer.util" and a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module == "slicer":
            aliases.update(a.asname or a.name for a in node.names if a.name == "util")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.Attribute):
            target = node.value
            dotted = (
                isinstance(target, ast.Attribute)
                and target.attr == "util"
                and isinstance(target.value, ast.Name)
                and target.value.id == "slicer"
            )
            aliased = isinstance(target, ast.Name) and target.id in aliases
            if dotted or aliased:
                yield node.attr, node.lineno


def known_slicer_util_names() -> Set[str]:
    names = {line.strip() for line in UTIL_NAMES_FILE.read_text().splitlines() if line.strip()}
    return names | SLICER_UTIL_CLASSES


def unknown_util_names(tree: ast.AST) -> List[Tuple[str, int]]:
    known = known_slicer_util_names()
    return [(name, line) for name, line in slicer_util_uses(tree) if name not in known]


def test_util_names_file_is_slicers_list():
    names = known_slicer_util_names()
    assert len(names) > 150
    assert {"loadUI", "childWidgetVariables", "addVolumeFromArray", "errorDisplay"} <= names


def test_collector_finds_real_and_bogus_names():
    snippet = ast.parse(
        "import slicer\n"
        "import slicer.util as su\n"
        "from slicer import util as u2\n"
        "from slicer.util import VTKObservationMixin, notAFunctionEither\n"
        "w = slicer.util.loadUI('x.ui')\n"
        "slicer.util.loadVolumeFromOuterSpace('x.png')\n"
        "su.errorDisplay('x'); u2.bogusAlias()\n"
    )
    found = {name for name, _ in slicer_util_uses(snippet)}
    assert found == {
        "loadUI",
        "loadVolumeFromOuterSpace",
        "errorDisplay",
        "bogusAlias",
        "VTKObservationMixin",
        "notAFunctionEither",
    }
    assert sorted(name for name, _ in unknown_util_names(snippet)) == [
        "bogusAlias",
        "loadVolumeFromOuterSpace",
        "notAFunctionEither",
    ]


@pytest.mark.parametrize("path", module_sources(), ids=lambda p: p.name)
def test_module_uses_only_real_slicer_util_names(path):
    assert unknown_util_names(parse(path)) == []


@pytest.mark.skipif(importlib.util.find_spec("slicer_core") is None,
                    reason="slicer-core (which ships Slicer's own slicer/util.py) is not installed")
def test_every_util_name_the_module_uses_is_in_slicer_cores_util():
    """slicer-core ships Base/Python/slicer/util.py as released: each name the module uses must be defined there."""
    spec = importlib.util.find_spec("slicer_core")
    tree = parse(Path(spec.origin).parents[1] / "slicer" / "util.py")
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    used = {name for path in module_sources() for name, _ in slicer_util_uses(parse(path))}
    assert used and used <= defined, sorted(used - defined)


def test_module_file_uses_slicer_util():
    used = {name for name, _ in slicer_util_uses(parse(MODULE_FILE))}
    assert {"loadUI", "childWidgetVariables", "errorDisplay", "VTKObservationMixin"} <= used


# --- (b) classes and the parameter node ----------------------------------------------------------------


def classes_of(tree: ast.Module) -> Dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def parameter_node_class(tree: ast.Module) -> ast.ClassDef:
    wrapped = [
        cls
        for cls in classes_of(tree).values()
        if any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in cls.decorator_list)
    ]
    assert len(wrapped) == 1, "expected exactly one @parameterNodeWrapper class"
    return wrapped[0]


def parameter_fields(cls: ast.ClassDef) -> Dict[str, ast.expr]:
    return {
        stmt.target.id: stmt.annotation
        for stmt in cls.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    }


def test_required_classes_and_bases():
    classes = classes_of(parse(MODULE_FILE))
    for name in REQUIRED_CLASSES:
        assert name in classes, f"{name} missing from X2CTRecon.py"
        bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in classes[name].bases}
        assert BASE_CLASSES[name] in bases


def test_parameter_node_class_fields_and_optional():
    cls = parameter_node_class(parse(MODULE_FILE))
    assert cls.name == "X2CTReconParameterNode"
    fields = parameter_fields(cls)
    assert set(fields) == {"paVolume", "lateralVolume", "model", "device", "heatMapOpacity", "heatMapThreshold",
                           "translateStyle", "style", "samples", "guidance"}
    assert ast.unparse(fields["samples"]) == "Annotated[int, WithinRange(1, 64)]"  # a QSpinBox binding: its range
    assert ast.unparse(fields["paVolume"]) == "vtkMRMLScalarVolumeNode"
    assert ast.unparse(fields["lateralVolume"]) == "Optional[vtkMRMLScalarVolumeNode]"
    assert "Choice" in ast.unparse(fields["device"]) and ast.unparse(fields["device"]).startswith("Annotated[str")
    for name in ("heatMapOpacity", "heatMapThreshold"):  # a ctkSliderWidget binding needs a bounded float
        assert ast.unparse(fields[name]) == "Annotated[float, WithinRange(0.0, 1.0)]"
    for name, annotation in fields.items():
        # PEP 604 unions fail on Python 3.9 inside a parameter node class, even as strings.
        unions = [n for n in ast.walk(annotation) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)]
        strings = [n for n in ast.walk(annotation) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not unions, f"{name}: use typing.Optional/Union, not `|`"
        assert not any("|" in s.value for s in strings), f"{name}: `|` in a string annotation"


def test_module_has_no_postponed_annotations():
    # @parameterNodeWrapper resolves annotations itself; keep them real objects in the module file.
    tree = parse(MODULE_FILE)
    futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert not any(a.name == "annotations" for n in futures for a in n.names)


def test_module_text_labels_synthetic_and_research_use():
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "SYNTHETIC — research use only" in text
    assert "research use only — not for diagnosis" in text.lower()
    assert '_("X2CT Recon")' in text


def test_logic_imports_x2ct_lazily():
    # Importing the module in Slicer must not need x2ct (generic tests, missing dependencies).
    for path in module_sources():
        for node in parse(path).body:
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "x2ct" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "x2ct", path


def test_no_stray_python_files_next_to_the_module():
    # Slicer loads every .py directly in a module folder as a module: helpers belong in X2CTReconLib.
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["X2CTRecon.py"]


# --- (c) Python 3.9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", module_sources(), ids=lambda p: p.name)
def test_sources_parse_as_python39(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_vermin_reports_no_python39_violations():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists():
        pytest.skip("vermin is not installed (pip install -e 'X2CTTraining[test]')")
    result = subprocess.run(
        [vermin, "--target=3.9-", "--no-tips", "--violations", str(MODULE_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- (d) the .ui file --------------------------------------------------------------------------------


def ui_tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def ui_widgets() -> Dict[str, ET.Element]:
    return {w.get("name"): w for w in ui_tree().iter("widget")}


def widget_property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def property_text(widget: ET.Element, name: str) -> str | None:
    prop = widget_property(widget, name)
    if prop is None:
        return None
    return "".join(prop.itertext()).strip()


def self_ui_names(tree: ast.AST) -> Set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def test_ui_is_well_formed_with_qmrmlwidget_top():
    root = ui_tree().getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "X2CTRecon"


def test_every_widget_the_module_uses_exists_in_ui():
    used = self_ui_names(parse(MODULE_FILE))
    assert {"applyButton", "cancelButton", "progressBar", "findingsTableView"} <= used  # the collector works
    missing = used - set(ui_widgets())
    assert not missing, f"self.ui.* names not in {UI_FILE.name}: {sorted(missing)}"


def test_slicer_parameter_names_are_parameter_node_fields():
    fields = set(parameter_fields(parameter_node_class(parse(MODULE_FILE))))
    bound = {
        name: property_text(widget, "SlicerParameterName")
        for name, widget in ui_widgets().items()
        if widget_property(widget, "SlicerParameterName") is not None
    }
    assert bound == {
        "paSelector": "paVolume",
        "lateralSelector": "lateralVolume",
        "deviceComboBox": "device",
        "heatMapOpacitySlider": "heatMapOpacity",
        "heatMapThresholdSlider": "heatMapThreshold",
        "styleCheckBox": "translateStyle",
        "samplesSpinBox": "samples",
        "guidanceSpinBox": "guidance",
    }
    assert set(bound.values()) <= fields


def test_ui_widgets_and_sections():
    widgets = ui_widgets()
    for name in ("paSelector", "lateralSelector"):
        assert widgets[name].get("class") == "qMRMLNodeComboBox"
        assert property_text(widgets[name], "nodeTypes") == "vtkMRMLScalarVolumeNode"
    for name, kind in (("styleCheckBox", "QCheckBox"), ("samplesSpinBox", "QSpinBox"), ("guidanceSpinBox",
                                                                                        "QDoubleSpinBox")):
        assert widgets[name].get("class") == kind, name  # the classes Slicer's GUI connectors bind exactly
    for name in ("deviceComboBox", "modelComboBox", "styleComboBox", "heatMapOutputComboBox", "heatMapOverComboBox"):
        assert widgets[name].get("class") == "QComboBox", name
    for name in ("applyButton", "cancelButton", "saveVolumeButton", "exportDicomButton", "saveFindingsButton"):
        assert widgets[name].get("class") == "QPushButton", name
    for name in ("heatMapOpacitySlider", "heatMapThresholdSlider"):
        assert widgets[name].get("class") == "ctkSliderWidget", name
    assert widgets["findingsTableView"].get("class") == "qMRMLTableView"
    assert widgets["progressBar"].get("class") == "QProgressBar"
    assert property_text(widgets["bannerLabel"], "text") == "SYNTHETIC — research use only"
    assert list(ui_widgets()).index("bannerLabel") == 1  # first thing in the panel (after the root widget)
    for hidden in ("progressBar", "cancelButton"):
        assert property_text(widgets[hidden], "visible") == "false"
    sections = {
        property_text(w, "text") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"
    }
    assert sections == {"Inputs", "Advanced", "Results", "Save and export"}
    declared = {c.findtext("class") for c in ui_tree().getroot().iter("customwidget")}
    assert {w.get("class") for w in widgets.values() if w.get("class")[0] in "qc"} <= declared


def test_every_node_selector_gets_the_scene():
    selectors = {name for name, w in ui_widgets().items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    connected = {
        c.findtext("receiver")
        for c in ui_tree().getroot().iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert selectors <= connected


def test_icons_are_128px_png():
    from PIL import Image

    for path in (MODULE_DIR / "Resources" / "Icons" / "X2CTRecon.png", REPO / "Resources" / "Icons" / "SlicerX2CT.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path


# --- (e) CMake -------------------------------------------------------------------------------------------


def cmake_text(path: Path) -> str:
    """CMake file without ``#`` comments (a ``#`` inside a quoted argument is kept)."""
    out, quoted, comment = [], False, False
    for char in path.read_text():
        if comment:
            comment = char != "\n"
            if comment:
                continue
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            comment = True
            continue
        out.append(char)
    return "".join(out)


def cmake_call_args(text: str, command: str) -> List[List[str]]:
    """Arguments of every ``command(...)`` call; quoted arguments may contain parentheses."""
    calls = []
    for match in re.finditer(rf"\b{re.escape(command)}\s*\(", text, flags=re.IGNORECASE):
        position, quoted = match.end(), False
        while quoted or text[position] != ")":
            quoted ^= text[position] == '"'
            position += 1
        calls.append(re.findall(r'"[^"]*"|[^\s"]+', text[match.end():position]))
    return calls


def cmake_set(text: str, variable: str) -> List[str]:
    for args in cmake_call_args(text, "set"):
        if args and args[0] == variable:
            return [a.strip('"') for a in args[1:]]
    raise AssertionError(f"set({variable} ...) not found")


def test_top_level_cmake_is_a_slicer_extension():
    raw = (REPO / "CMakeLists.txt").read_text()
    text = cmake_text(REPO / "CMakeLists.txt")
    assert re.search(r"cmake_minimum_required\(VERSION 3\.16\.3\.\.\.3\.19\.7 FATAL_ERROR\)", text)
    assert cmake_call_args(text, "project") == [["SlicerX2CT"]]
    for variable in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert cmake_set(text, variable), variable
    assert "PyTorch" in cmake_set(text, "EXTENSION_DEPENDS")
    assert "research use only" in " ".join(cmake_set(text, "EXTENSION_DESCRIPTION")).lower()
    assert cmake_set(text, "EXTENSION_ICONURL")[0].endswith("/Resources/Icons/SlicerX2CT.png")
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(X2CTRecon)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.find(snippet) for snippet in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))
    assert raw.index("add_subdirectory(X2CTRecon)") < raw.index("## NEXT_MODULE")
    # X2CTTraining is bundled as data, never built or scanned as a Slicer module.
    assert not any(args and "X2CTTraining" in args[0] for args in cmake_call_args(text, "add_subdirectory"))
    assert "X2CTTraining/x2ct" in text and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in text


def resolve_module_name(items: List[str], module_name: str) -> List[str]:
    return [item.replace("${MODULE_NAME}", module_name) for item in items]


def test_module_cmake_lists_every_script_and_resource():
    text = cmake_text(MODULE_DIR / "CMakeLists.txt")
    assert cmake_set(text, "MODULE_NAME") == ["X2CTRecon"]
    scripts = resolve_module_name(cmake_set(text, "MODULE_PYTHON_SCRIPTS"), "X2CTRecon")
    resources = resolve_module_name(cmake_set(text, "MODULE_PYTHON_RESOURCES"), "X2CTRecon")
    expected_scripts = {"X2CTRecon.py"} | {f"X2CTReconLib/{p.name}" for p in LIB_DIR.glob("*.py")}
    assert set(scripts) == expected_scripts
    assert {
        "Resources/Icons/X2CTRecon.png",
        "Resources/UI/X2CTRecon.ui",
        "Resources/requirements.txt",
        "Scripts/x2ct_batch.py",
    } <= set(resources)
    for item in scripts + resources:  # slicerMacroBuildScriptedModule stops on a missing file
        assert (MODULE_DIR / item).is_file(), item

    macro = cmake_call_args(text, "slicerMacroBuildScriptedModule")
    assert len(macro) == 1 and "WITH_GENERIC_TESTS" in macro[0]
    assert ["NAME", "${MODULE_NAME}"] == macro[0][:2]
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)"
                     r".*add_subdirectory\(Testing\).*endif\(\)", text, flags=re.DOTALL)
    assert cmake_call_args(cmake_text(MODULE_DIR / "Testing" / "CMakeLists.txt"), "add_subdirectory") == [["Python"]]
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


# --- (f) X2CTReconLib geometry, headless -----------------------------------------------------------------


@pytest.fixture()
def recon_lib(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(MODULE_DIR), *sys.path])
    monkeypatch.delitem(sys.modules, "X2CTReconLib", raising=False)
    import X2CTReconLib

    return X2CTReconLib


def test_bundled_x2ct_found_in_source_checkout(recon_lib):
    assert recon_lib.addBundledX2CTToPath() == str(REPO / "X2CTTraining")
    assert str(REPO / "X2CTTraining") in sys.path


def test_canonical_grid_ijk_to_ras(recon_lib):
    from x2ct.geometry import CanonicalGrid

    for grid in (CanonicalGrid(), CanonicalGrid(size=64, center_lps=(12.0, -30.0, 1105.5))):
        image = grid.image_from_array(np.zeros(grid.shape_dhw, np.float32))
        np.testing.assert_allclose(recon_lib.ijkToRASFromImage(image), grid.ijk_to_ras(), atol=1e-9)


def test_oblique_image_ijk_to_ras_matches_simpleitk(recon_lib):
    image = sitk.Image([5, 6, 7], sitk.sitkInt16)
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-10.0, 22.5, 3.0))
    rotation = sitk.VersorTransform((0.2, -0.4, 0.9), 0.6).GetMatrix()
    image.SetDirection(rotation)
    matrix = recon_lib.ijkToRASFromImage(image)
    for index in ((0, 0, 0), (4, 0, 0), (0, 5, 0), (1, 2, 6)):
        lps = image.TransformIndexToPhysicalPoint(index)
        ras = matrix @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], (-lps[0], -lps[1], lps[2]), atol=1e-9)


def test_2d_radiograph_becomes_single_slice(recon_lib):
    image = sitk.Image([30, 20], sitk.sitkUInt8)
    image.SetSpacing((0.15, 0.2))
    image.SetOrigin((5.0, 6.0))
    matrix = recon_lib.ijkToRASFromImage(image)
    np.testing.assert_allclose(matrix[:3, :3], np.diag([-0.15, -0.2, 1.0]))
    np.testing.assert_allclose(matrix[:3, 3], (-5.0, -6.0, 0.0))
    assert recon_lib.voxelArrayFromImage(image).shape == (20, 30)


def test_voxel_array_order_and_types(recon_lib):
    array = np.arange(2 * 3 * 4, dtype=np.int64).reshape(2, 3, 4)
    voxels = recon_lib.voxelArrayFromImage(sitk.GetImageFromArray(array))
    assert voxels.dtype == np.int32  # Slicer does not display "long long"
    np.testing.assert_array_equal(voxels, array)  # (k, j, i), like slicer.util.arrayFromVolume
    with pytest.raises(ValueError):
        recon_lib.voxelArrayFromImage(sitk.GetImageFromArray(np.zeros((4, 4, 3), np.uint8), isVector=True))


def test_top_level_cmake_bundles_models_and_sample_radiographs_where_x2ct_looks():
    text = cmake_text(REPO / "CMakeLists.txt")
    assert cmake_set(text, "X2CT_RESOURCES_SUBDIR") == ["X2CTReconLib/Resources"]
    # x2ct.resources looks three folders above x2ct/resources.py: X2CTReconLib/bundled/x2ct -> X2CTReconLib.
    resources_py = REPO / "X2CTTraining" / "x2ct" / "resources.py"
    assert "parents[2]" in resources_py.read_text()
    for item in ("Resources/Models", "Resources/SampleData/radiographs", "Resources/SampleData/radiographs_tb"):
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{item}" in text and (REPO / item).is_dir(), item
    from x2ct.demo import DEMO_CASES

    for folder in DEMO_CASES.values():  # every sample case the demo reads ships
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/Resources/SampleData/{folder}\n" in text, folder
    assert "${CMAKE_CURRENT_SOURCE_DIR}/Resources/Classifiers" in text  # x2ct.inference.models.CLASSIFIERS_FOLDER
    assert "${CMAKE_CURRENT_SOURCE_DIR}/Resources/Styles" in text  # x2ct.inference.style (bundled style models)


# --- (g) dependencies and the README's API table ---------------------------------------------------------


def test_requirements_match_the_x2ct_package():
    import tomllib

    sys.path.insert(0, str(MODULE_DIR))
    try:
        from X2CTReconLib.dependencies import readRequirements, requirementName
    finally:
        sys.path.remove(str(MODULE_DIR))
    project = tomllib.loads((REPO / "X2CTTraining" / "pyproject.toml").read_text())["project"]
    package = {requirementName(r): r.replace(" ", "") for r in project["dependencies"]}
    module = {requirementName(r): r.replace(" ", "") for r in readRequirements(REQUIREMENTS_FILE)}
    assert "torch" not in module  # PyTorch comes from the PyTorch extension
    for name, requirement in module.items():
        assert package.get(name) == requirement, (name, requirement, package.get(name))


NOT_SLICER_RECEIVERS = {"sitk", "argparse", "X2CTReconLib", "X2CTRecon", "study"}
"""Modules whose capitalised calls are not Slicer/VTK APIs (SimpleITK, the standard library, our own code:
``study`` is x2ct.readerstudy.study, whose records the reader panel builds)."""
SIMPLEITK_METHODS = {"TransformIndexToPhysicalPoint", "SetSpacing"}  # called on SimpleITK images in the self-tests


def called_methods(tree: ast.AST) -> Set[str]:
    """Names of every ``<something>.<Name>(...)`` call whose method name starts with a capital (VTK/MRML style),
    except calls on :data:`NOT_SLICER_RECEIVERS` and of classes defined in the module itself."""
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)} | {"DependencyError"}
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr[:1].isupper()
        and not (isinstance(node.func.value, ast.Name) and node.func.value.id in NOT_SLICER_RECEIVERS)
        and node.func.attr not in own | SIMPLEITK_METHODS
    }


def readme_slicer_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## 3D Slicer")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_slicer_and_vtk_method_is_in_the_readme_api_table():
    section = readme_slicer_section()
    used = set()
    reader_study = REPO / "X2CTReaderStudy"
    for path in (MODULE_FILE, LIB_DIR / "selftest.py", BATCH_SCRIPT, reader_study / "X2CTReaderStudy.py",
                 *sorted((reader_study / "X2CTReaderStudyLib").glob("*.py"))):  # fmt: skip
        used |= called_methods(parse(path))
    assert {"AddNewNodeByClass", "SetCellText", "CreateDefaultVolumeRenderingNodes"} <= used  # the collector works
    missing = sorted(name for name in used if f"`{name}" not in section and f" {name}`" not in section
                     and f"{name}`" not in section and f"`{name}(" not in section)
    assert not missing, f"Slicer/VTK methods used but not in the README's API table: {missing}"


# --- (h) the second module, X2CTReaderStudy ---------------------------------------------------------------

READER_DIR = REPO / "X2CTReaderStudy"
READER_FILE = READER_DIR / "X2CTReaderStudy.py"
READER_LIB_DIR = READER_DIR / "X2CTReaderStudyLib"
READER_UI_FILE = READER_DIR / "Resources" / "UI" / "X2CTReaderStudy.ui"


def reader_sources() -> List[Path]:
    return [READER_FILE, *sorted(READER_LIB_DIR.glob("*.py"))]


@pytest.mark.parametrize("path", reader_sources(), ids=lambda p: p.name)
def test_reader_study_sources_are_python39_with_real_util_names_and_no_torch(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    assert unknown_util_names(tree) == []
    for node in ast.walk(tree):  # the panel reads study records only: x2ct.readerstudy.study, never torch
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(name.split(".")[0] == "torch" for name in names), (path, node.lineno)
    for node in tree.body:  # loading the module in Slicer must not need x2ct
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(name.split(".")[0] == "x2ct" for name in names), path


def test_reader_study_classes_ui_and_files():
    tree = parse(READER_FILE)
    classes = classes_of(tree)
    for suffix, base in (("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                         ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")):
        cls = classes[f"X2CTReaderStudy{suffix}"]
        assert base in {b.id for b in cls.bases if isinstance(b, ast.Name)}, cls.name
    assert {"loadUI", "childWidgetVariables", "errorDisplay", "setDataProbeVisible", "addVolumeFromArray"} <= {
        name for path in reader_sources() for name, _ in slicer_util_uses(parse(path))}
    root = ET.parse(READER_UI_FILE).getroot()
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "X2CTReaderStudy"
    widgets = {w.get("name") for w in root.iter("widget")}
    missing = self_ui_names(tree) - widgets
    assert not missing, f"self.ui.* names not in {READER_UI_FILE.name}: {sorted(missing)}"
    assert sorted(p.name for p in READER_DIR.glob("*.py")) == ["X2CTReaderStudy.py"]


def test_reader_study_cmake_lists_every_script_and_resource():
    raw = (REPO / "CMakeLists.txt").read_text()
    subdirectories = cmake_call_args(cmake_text(REPO / "CMakeLists.txt"), "add_subdirectory")
    assert ["X2CTReaderStudy"] in subdirectories
    assert raw.index("add_subdirectory(X2CTRecon)") < raw.index("add_subdirectory(X2CTReaderStudy)")
    assert raw.index("add_subdirectory(X2CTReaderStudy)") < raw.index("## NEXT_MODULE")
    text = cmake_text(READER_DIR / "CMakeLists.txt")
    assert cmake_set(text, "MODULE_NAME") == ["X2CTReaderStudy"]
    scripts = resolve_module_name(cmake_set(text, "MODULE_PYTHON_SCRIPTS"), "X2CTReaderStudy")
    resources = resolve_module_name(cmake_set(text, "MODULE_PYTHON_RESOURCES"), "X2CTReaderStudy")
    lib = {f"X2CTReaderStudyLib/{p.name}" for p in READER_LIB_DIR.glob("*.py")}
    assert set(scripts) == {"X2CTReaderStudy.py"} | lib
    assert {"Resources/Icons/X2CTReaderStudy.png", "Resources/UI/X2CTReaderStudy.ui"} <= set(resources)
    for item in scripts + resources:
        assert (READER_DIR / item).is_file(), item
    macro = cmake_call_args(text, "slicerMacroBuildScriptedModule")
    assert len(macro) == 1 and "WITH_GENERIC_TESTS" in macro[0] and macro[0][:2] == ["NAME", "${MODULE_NAME}"]
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)"
                     r".*add_subdirectory\(Testing\).*endif\(\)", text, flags=re.DOTALL)
    assert (READER_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()
    from PIL import Image

    with Image.open(READER_DIR / "Resources" / "Icons" / "X2CTReaderStudy.png") as image:
        assert image.format == "PNG" and image.size == (128, 128)
