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

The reader-study panel (X2CTReaderStudy/Resources/UI/X2CTReaderStudy.ui) is drawn the same way, filled as
the module fills it on a real-vs-synthetic item (its questions come from X2CTReaderStudyLib.reading):

    QT_QPA_PLATFORM=offscreen python docs/render_panel.py --reader-study -o docs/images/reader_study_panel.png
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "X2CTRecon" / "Resources" / "UI" / "X2CTRecon.ui"
READER_UI_FILE = REPO / "X2CTReaderStudy" / "Resources" / "UI" / "X2CTReaderStudy.ui"
MODELS_DIR = REPO / "Resources" / "Models"

QT_STAND_INS = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "ctkSliderWidget": "QSlider",
    "qMRMLTableView": "QTableWidget",
    "ctkPathLineEdit": "QLineEdit",
}
"""Slicer/CTK class -> plain Qt class used for the picture."""

DROPPED_PROPERTIES = {"nodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "collapsed", "singleStep",
                      "pageStep", "minimum", "maximum", "decimals", "SlicerParameterName", "visible", "filters"}
"""Properties the stand-ins do not have (or that only matter while running)."""


def _save(app, panel, width: int, output: Path) -> None:
    """Lay the panel out at ``width`` pixels, draw it offscreen and save it as PNG at ``output``."""
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")


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
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import (
        QComboBox,
        QLabel,
        QProgressBar,
        QPushButton,
        QSlider,
        QTableWidget,
        QTableWidgetItem,
    )

    app, panel = loadPlainUi(UI_FILE)

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
    _save(app, panel, width, output)


def loadPlainUi(uiFile: Path):
    """(QApplication, the panel) of a .ui rewritten by :func:`plainQtUi`."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    data = QByteArray(plainQtUi(uiFile.read_text(encoding="utf-8")).encode("utf-8"))  # alive while QBuffer reads it
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not load the rewritten {uiFile.name}")
    return app, panel


def renderReaderStudy(output: Path, width: int = 380) -> None:
    """The X2CT Reader Study panel on the 13th of 40 items, a real-vs-synthetic CT half answered (1-5 scales)."""
    import sys
    from types import SimpleNamespace

    from PySide6.QtWidgets import QLabel, QLineEdit, QPushButton, QRadioButton, QSpinBox

    sys.path[:0] = [str(REPO / "X2CTReaderStudy")]
    from X2CTReaderStudyLib import reading

    app, panel = loadPlainUi(READER_UI_FILE)
    definition = SimpleNamespace(disease="tuberculosis", confidence_scale="1-5", likert_points=5)
    item = SimpleNamespace(task=reading.REAL_VS_SYNTHETIC, radiographs={}, volume="opaque")
    questions = {q.key: q for q in reading.questionsFor(definition, item)}
    panel.findChild(QLineEdit, "readerLineEdit").setText("reader01")
    panel.findChild(QLineEdit, "studyPathLineEdit").setText("/data/studies/tb-reader-study")
    panel.findChild(QLabel, "progressLabel").setText("12 of 40 answered")
    panel.findChild(QLabel, "instructionLabel").setText(
        "Is this CT real or synthetic? Rate its anatomy and slice consistency.")
    call = questions[reading.CALL]
    panel.findChild(QLabel, "callLabel").setText(call.label)
    for name, choice in zip(("callFirstButton", "callSecondButton"), call.choices):
        panel.findChild(QRadioButton, name).setText(f"{choice} ({reading.CALL_SHORTCUTS[choice]})")
    panel.findChild(QRadioButton, "callSecondButton").setChecked(True)
    for key, value in ((reading.CONFIDENCE, 4), (reading.ANATOMY, 3), (reading.CONSISTENCY, None)):
        question = questions[key]
        panel.findChild(QLabel, f"{key}Label").setText(question.label)
        box = panel.findChild(QSpinBox, f"{key}SpinBox")
        box.setRange(question.low - 1, question.high)
        box.setValue(question.low - 1 if value is None else value)
    panel.findChild(QPushButton, "backButton").hide()  # the study does not allow going back
    _save(app, panel, width, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "images" / "slicer_panel.png")
    parser.add_argument("--summary", type=Path, help="summary.json of an x2ct prediction, to fill the results")
    parser.add_argument("--reader-study", action="store_true", help="draw the X2CT Reader Study panel instead")
    args = parser.parse_args()
    if args.reader_study:
        renderReaderStudy(args.output)
        print(f"wrote {args.output}")
        return
    summary = json.loads(args.summary.read_text(encoding="utf-8")) if args.summary else None
    findings = None
    if args.summary and (args.summary.parent / "findings.json").is_file():
        findings = json.loads((args.summary.parent / "findings.json").read_text(encoding="utf-8"))
    render(args.output, summary, findings)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
