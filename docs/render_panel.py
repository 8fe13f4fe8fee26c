"""Render the X2CT Recon panel (X2CTRecon/Resources/UI/X2CTRecon.ui) to a PNG without Slicer.

This is a picture of the .ui file, not a Slicer screenshot: Qt's QUiLoader (PySide6) loads a copy of
the .ui in which Slicer's and CTK's widgets are replaced by the plain Qt widgets they derive from or
look like (qMRMLWidget -> QWidget, ctkCollapsibleButton -> QGroupBox, qMRMLNodeComboBox -> QComboBox,
ctkSliderWidget -> QSlider, qMRMLTableView -> QTableWidget). The widgets are then filled as the
module fills them after a run: node names, the bundled model names, and the re-projection scores
of a real ``summary.json`` written by ``x2ct predict`` (or the Slicer batch script), and the findings
table from the ``findings.json`` next to it.

    pip install PySide6-Essentials          # in its own environment, not the project's
    x2ct predict --pa Resources/SampleData/radiographs/pa.png \\
        --lateral Resources/SampleData/radiographs/lateral.png -o /tmp/x2ct-sample
    QT_QPA_PLATFORM=offscreen python docs/render_panel.py --summary /tmp/x2ct-sample/summary.json \\
        -o docs/images/slicer_panel.png
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "X2CTRecon" / "Resources" / "UI" / "X2CTRecon.ui"
MODELS_DIR = REPO / "Resources" / "Models"

QT_STAND_INS = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "ctkSliderWidget": "QSlider",
    "qMRMLTableView": "QTableWidget",
}
"""Slicer/CTK class -> plain Qt class used for the picture."""

DROPPED_PROPERTIES = {"nodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "collapsed", "singleStep",
                      "pageStep", "minimum", "maximum", "decimals", "SlicerParameterName", "visible"}
"""Properties the stand-ins do not have (or that only matter while running)."""


def plainQtUi(uiText: str) -> str:
    """The .ui with Slicer/CTK widgets turned into plain Qt ones; collapsed sections keep only their title."""
    root = ET.fromstring(uiText)
    for widget in root.iter("widget"):
        cls = widget.get("class")
        collapsed = any(p.get("name") == "collapsed" and "".join(p.itertext()).strip() == "true"
                        for p in widget.findall("property"))
        for prop in list(widget.findall("property")):
            if prop.get("name") in DROPPED_PROPERTIES:
                widget.remove(prop)
            elif cls == "ctkCollapsibleButton" and prop.get("name") == "text":
                prop.set("name", "title")
                string = prop.find("string")
                string.text = ("▸ " if collapsed else "▾ ") + (string.text or "")
        if collapsed:
            for layout in widget.findall("layout"):
                widget.remove(layout)
        if cls in QT_STAND_INS:
            widget.set("class", QT_STAND_INS[cls])
    for tag in ("customwidgets", "connections"):
        for element in root.findall(tag):
            root.remove(element)
    return ET.tostring(root, encoding="unicode")


def consistencyLines(summary: Optional[Dict]) -> str:
    if not summary:
        return ""
    perView = summary["consistency"]["per_view"]
    lines = [f"{view}: NCC {v['ncc']:.3f}, SSIM {v['ssim']:.3f}" for view, v in perView.items()]
    lines.append(f"mean NCC {summary['consistency']['score']:.3f} (agreement of the CT's re-projection with the "
                 "input; not accuracy)")
    return "\n".join(lines)


def render(output: Path, summary: Optional[Dict], findings_document: Optional[Dict] = None, width: int = 380) -> None:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import (
        QApplication,
        QComboBox,
        QLabel,
        QProgressBar,
        QPushButton,
        QSlider,
        QTableWidget,
        QTableWidgetItem,
    )

    app = QApplication.instance() or QApplication([])
    data = QByteArray(plainQtUi(UI_FILE.read_text(encoding="utf-8")).encode("utf-8"))
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError("QUiLoader could not load the rewritten .ui")

    def child(kind, name):
        return panel.findChild(kind, name)

    model = (summary or {}).get("model", {}).get("name")
    child(QComboBox, "paSelector").addItem("pa")
    child(QComboBox, "lateralSelector").addItem("lateral")
    models = child(QComboBox, "modelComboBox")
    models.addItem("Automatic (biplanar with a lateral, single-view without)")
    for folder in sorted(p for p in MODELS_DIR.iterdir() if (p / "model.json").is_file()):
        models.addItem(folder.name)
    if model:
        models.setCurrentText(model)
    child(QPushButton, "applyButton").setEnabled(True)
    child(QProgressBar, "progressBar").hide()
    child(QPushButton, "cancelButton").hide()
    findings = (findings_document or {}).get("findings", [])
    if summary:
        child(QLabel, "statusLabel").setText(f"Done: SYNTHETIC CT ({model})")
        child(QLabel, "consistencyLabel").setText(consistencyLines(summary))
        child(QLabel, "findingsLabel").setText("" if findings else "No classifier ran for this model: no findings.")
    table = child(QTableWidget, "findingsTableView")
    columns = ["label", "probability", "threshold", "call", "output", "task"]
    table.setColumnCount(len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setRowCount(len(findings))
    for row, finding in enumerate(findings):
        for column, key in enumerate(columns):
            table.setItem(row, column, QTableWidgetItem(str(finding[key])))
    table.resizeColumnsToContents()
    table.setFixedHeight(70 + 24 * len(findings))
    for finding in findings:
        child(QComboBox, "heatMapOutputComboBox").addItem(finding["output"])
    child(QComboBox, "heatMapOverComboBox").addItem("over the synthetic CT")
    for name, value in (("heatMapOpacitySlider", 40), ("heatMapThresholdSlider", 30)):
        slider = child(QSlider, name)
        slider.setOrientation(Qt.Horizontal)
        slider.setRange(0, 100)
        slider.setValue(value)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "images" / "slicer_panel.png")
    parser.add_argument("--summary", type=Path, help="summary.json of an x2ct prediction, to fill the results")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text(encoding="utf-8")) if args.summary else None
    findings = None
    if args.summary and (args.summary.parent / "findings.json").is_file():
        findings = json.loads((args.summary.parent / "findings.json").read_text(encoding="utf-8"))
    render(args.output, summary, findings)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
