"""X2CTReaderStudy: read a blinded reader study (real vs synthetic CT, diagnosis with and without the CT) in Slicer.

GUI and MRML glue only. The study folder, the reader's order and the answer file belong to
``x2ct.readerstudy.study`` (standard library only: no torch), which ships with X2CTRecon
(X2CTReconLib.addBundledX2CTToPath). What is asked per item, the answer checks, the shortcuts and the
layouts are pure functions in X2CTReaderStudyLib.reading.
The code must run on Slicer 5.8 (Python 3.9): use typing.Optional, never ``X | None``.
"""

import datetime
import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from X2CTReaderStudyLib import reading, studyModule

CASE_CT_NAME = "Case CT"
RADIOGRAPH_NAMES = {reading.PA: "Radiograph PA", reading.LATERAL: "Radiograph lateral"}
"""Neutral node names: the same for every case, whatever its source."""

TASK_INSTRUCTIONS = {
    (reading.DIAGNOSIS, reading.XRAY): "Read the radiograph(s). Is {disease} present?",
    (reading.DIAGNOSIS, reading.XRAY_CT): "Read the radiograph(s) with the CT. Is {disease} present?",
    (reading.REAL_VS_SYNTHETIC, None): "Is this CT real or synthetic? Rate its anatomy and slice consistency.",
}


#
# X2CTReaderStudy
#


class X2CTReaderStudy(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("X2CT Reader Study")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerX2CT contributors"]
        self.parent.helpText = _("""
Reads a blinded reader study made by <i>x2ct reader-study build</i>: real versus synthetic CT, and diagnosis from
the radiograph alone and with the synthetic CT. <b>Research use only — not for diagnosis.</b>
<p>Enter your reader ID, choose the study folder and press <i>Open</i>. Answer each case and lock it
(<i>Enter</i>); every locked answer is saved at once, and the study resumes where you stopped.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer and SimpleITK. Part of SlicerX2CT.
""")


#
# X2CTReaderStudyWidget
#


class X2CTReaderStudyWidget(ScriptedLoadableModuleWidget):
    """The module panel: reader ID, study folder, the answer widgets and their keyboard shortcuts.

    GUI only; every decision is the logic's. What only the GUI can hide (the slice-view corner
    annotations and the Data Probe) is switched off here while the module is open.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic: Optional[X2CTReaderStudyLogic] = None
        self._shortcuts: List = []
        self._annotationsWereEnabled: Optional[bool] = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/X2CTReaderStudy.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = X2CTReaderStudyLogic()

        self.ui.openButton.connect("clicked(bool)", self.onOpen)
        self.ui.lockButton.connect("clicked(bool)", self.onLock)
        self.ui.backButton.connect("clicked(bool)", self.onBack)
        self._addShortcuts()
        self._showItem(None)

    def cleanup(self) -> None:
        self._restoreAnnotations()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    def enter(self) -> None:
        self._hideAnnotations()

    def exit(self) -> None:
        self._restoreAnnotations()

    # Blinding that only the GUI can do

    def _sliceAnnotations(self):
        dataProbe = getattr(slicer.modules, "DataProbeInstance", None)
        return getattr(getattr(dataProbe, "infoWidget", None), "sliceAnnotations", None)

    def _hideAnnotations(self) -> None:
        """Corner annotations (volume names, window/level) and the Data Probe off; Slicer's script repository way."""
        annotations = self._sliceAnnotations()
        if annotations is not None:
            if self._annotationsWereEnabled is None:
                self._annotationsWereEnabled = bool(annotations.sliceViewAnnotationsEnabled)
            annotations.sliceViewAnnotationsEnabled = False
            annotations.updateSliceViewFromGUI()
        slicer.util.setDataProbeVisible(False)

    def _restoreAnnotations(self) -> None:
        annotations = self._sliceAnnotations()
        if annotations is not None and self._annotationsWereEnabled is not None:
            annotations.sliceViewAnnotationsEnabled = self._annotationsWereEnabled
            annotations.updateSliceViewFromGUI()
        self._annotationsWereEnabled = None
        slicer.util.setDataProbeVisible(True)

    # Keyboard

    def _addShortcuts(self) -> None:
        """1-9: the next empty rating; R/S or P/A: the call; Enter: lock; Backspace: back (when allowed)."""
        import qt

        keys: Dict[str, Callable[[], None]] = {str(d): (lambda d=d: self.onDigit(d)) for d in range(1, 10)}
        for letter in sorted(set(reading.CALL_SHORTCUTS.values())):
            keys[letter] = lambda letter=letter: self.onLetter(letter)
        keys.update({"Return": self.onLock, "Enter": self.onLock, "Backspace": self.onBack})
        for key, action in keys.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", action)
            self._shortcuts.append(shortcut)

    def _asked(self) -> bool:
        return self.parent.isEntered and self.logic.currentItem is not None and self.ui.answerCollapsibleButton.enabled

    def onDigit(self, digit: int) -> None:
        if not self._asked():
            return
        key = reading.ratingForDigit(self.logic.currentQuestions(), self._answers(), digit)
        if key is not None:
            self._ratingBox(key).value = digit

    def onLetter(self, letter: str) -> None:
        if not self._asked():
            return
        choice = reading.callForKey(self.logic.currentQuestions(), letter)
        if choice is not None:
            buttons = (self.ui.callFirstButton, self.ui.callSecondButton)
            buttons[self.logic.currentQuestions()[0].choices.index(choice)].checked = True

    # Answer widgets

    def _ratingBox(self, key: str):
        return {reading.CONFIDENCE: self.ui.confidenceSpinBox, reading.ANATOMY: self.ui.anatomySpinBox,
                reading.CONSISTENCY: self.ui.consistencySpinBox}[key]

    def _answers(self) -> Dict[str, object]:
        """The widgets' values; a spin box at its minimum (shown as "–") is unanswered."""
        answers: Dict[str, object] = {}
        for question in self.logic.currentQuestions():
            if question.choices:
                checked = [c for c, b in zip(question.choices, (self.ui.callFirstButton, self.ui.callSecondButton))
                           if b.checked]
                answers[question.key] = checked[0] if checked else None
            else:
                box = self._ratingBox(question.key)
                answers[question.key] = None if box.value == box.minimum else int(box.value)
        return answers

    def _resetAnswerWidgets(self, questions) -> None:
        for button in (self.ui.callFirstButton, self.ui.callSecondButton):
            button.autoExclusive = False
            button.checked = False
            button.autoExclusive = True
        for question in questions:
            if question.choices:
                self.ui.callLabel.text = question.label
                for button, choice in zip((self.ui.callFirstButton, self.ui.callSecondButton), question.choices):
                    button.text = f"{choice} ({reading.CALL_SHORTCUTS[choice]})"
            else:
                box = self._ratingBox(question.key)
                box.minimum, box.maximum = question.low - 1, question.high  # minimum = unanswered, shown as "–"
                box.value = box.minimum
        for key, label in ((reading.CONFIDENCE, self.ui.confidenceLabel), (reading.ANATOMY, self.ui.anatomyLabel),
                           (reading.CONSISTENCY, self.ui.consistencyLabel)):
            question = next((q for q in questions if q.key == key), None)
            label.visible = self._ratingBox(key).visible = question is not None
            label.text = question.label if question else ""

    # Actions

    def onOpen(self) -> None:
        try:
            with slicer.util.WaitCursor():
                self.logic.openStudy(self.ui.studyPathLineEdit.currentPath, self.ui.readerLineEdit.text)
                self._hideAnnotations()
                item = self.logic.showCurrentItem()
        except Exception as err:  # noqa: BLE001 - one message for the reader; details in the log
            self._reportError(err)
            return
        self._showItem(item)

    def onLock(self) -> None:
        if not self._asked():
            return
        try:
            self.logic.lockAnswer(self._answers())
            item = self.logic.showCurrentItem()
        except Exception as err:  # noqa: BLE001
            self._reportError(err)
            return
        self._showItem(item)

    def onBack(self) -> None:
        if not self.logic.canGoBack():
            return
        try:
            item = self.logic.goBack()
        except Exception as err:  # noqa: BLE001
            self._reportError(err)
            return
        self._showItem(item)

    def _showItem(self, item) -> None:
        logic = self.logic
        self.ui.answerCollapsibleButton.enabled = item is not None
        self.ui.backButton.visible = logic.allowBack
        self.ui.backButton.enabled = logic.canGoBack()
        if not logic.isOpen:
            self.ui.progressLabel.text = ""
            self.ui.instructionLabel.text = _("Enter your reader ID, choose the study folder and press Open.")
            return
        self.ui.progressLabel.text = _("{done} of {total} answered").format(done=logic.answeredCount(),
                                                                             total=logic.itemCount())
        if item is None:
            self.ui.instructionLabel.text = logic.statusText()
            return
        self.ui.instructionLabel.text = logic.instruction(item)
        self._resetAnswerWidgets(logic.currentQuestions())

    def _reportError(self, error: BaseException) -> None:
        message = self.logic.errorMessage(error)
        self.ui.instructionLabel.text = message
        slicer.util.errorDisplay(message, windowTitle=_("X2CT Reader Study"))


#
# X2CTReaderStudyLogic
#


class X2CTReaderStudyLogic(ScriptedLoadableModuleLogic):
    """One reader's session on one study folder; usable without the GUI (tests, scripts).

    ``openStudy`` loads or makes the reader's order and finds the first unanswered item;
    ``showCurrentItem`` puts that item's volumes in the scene under neutral names (replacing the
    previous item's) and starts its reading clock; ``lockAnswer`` checks the answers and appends them,
    fsync'ed, to the reader's answer file. ``clock`` is the monotonic clock the reading times use.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.clock = clock
        self.studyFolder: Optional[Path] = None
        self.reader = ""
        self.definition = None
        self.order = None
        self.answers: List = []
        self.position: Optional[int] = None
        """Index in ``order.item_ids`` of the item shown (or to show); None when every item is answered."""
        self._items: Dict = {}
        self._shownAt: Optional[float] = None
        self._caseNodes: List = []

    # Study and progress

    @property
    def isOpen(self) -> bool:
        return self.order is not None

    @property
    def allowBack(self) -> bool:
        return bool(self.definition is not None and self.definition.allow_back)

    def openStudy(self, folder: str, reader: str) -> Optional[int]:
        """Open ``folder`` for ``reader`` (the order is made and stored on the first open); return the index of the
        first unanswered item, where the reader resumes, or None when the reader has answered everything."""
        study = studyModule()
        from x2ct.errors import InputError

        reader = (reader or "").strip()
        if not study.valid_reader_id(reader):
            raise InputError(None, f"reader ID '{reader}' is not valid: use letters, digits, '-', '_' or '.' (1-40)")
        if not folder or not Path(folder).is_dir():
            raise InputError(folder or None, "choose the study folder (the one that holds study.json)")
        folder = Path(folder)
        definition = study.load_definition(folder)
        items = {item.item_id: item for item in study.load_items(folder)}
        order = study.load_or_create_order(folder, reader)
        orderPath = study.reader_dir(folder, reader) / study.ORDER_FILE
        unknown = [itemId for itemId in order.item_ids if itemId not in items]
        if order.reader != reader or unknown:
            raise InputError(orderPath, f"does not belong to reader '{reader}' of this study ({len(unknown)} unknown "
                                        "items); ask the coordinator")
        answers = study.read_answers(folder, reader)
        self.clearCase()
        self.studyFolder, self.reader, self.definition, self.order = folder, reader, definition, order
        self._items, self.answers = items, answers
        self.position = study.next_unanswered(order, answers)
        return self.position

    @property
    def currentItem(self):
        if self.order is None or self.position is None:
            return None
        return self._items[self.order.item_ids[self.position]]

    def currentQuestions(self) -> List[reading.Question]:
        item = self.currentItem
        return reading.questionsFor(self.definition, item) if item is not None else []

    def itemCount(self) -> int:
        return len(self.order.item_ids) if self.order else 0

    def answeredCount(self) -> int:
        answered = {answer.item_id for answer in self.answers}
        return sum(1 for itemId in self.order.item_ids if itemId in answered) if self.order else 0

    def instruction(self, item) -> str:
        phase = item.phase if item.task == reading.DIAGNOSIS else None
        return _(TASK_INSTRUCTIONS[(item.task, phase)]).format(disease=self.definition.disease)

    def statusText(self) -> str:
        """What the panel says when no item is shown: done, or waiting for the washout."""
        if self.position is None:
            return _("All {count} items are answered. Thank you!").format(count=self.itemCount())
        opens = self.sessionOpensAt(self.currentItem)
        return _("Session {session} opens on {date} (washout).").format(
            session=self.currentItem.session, date=opens.strftime("%Y-%m-%d %H:%M UTC") if opens else "")

    def sessionOpensAt(self, item) -> Optional[datetime.datetime]:
        """When ``item``'s session may start: the last answer of the earlier sessions plus the study's washout;
        None for session 1 or when there is no earlier answer."""
        if item is None or item.session <= 1:
            return None
        earlier = [_parseTime(a.locked_at) for a in self.answers
                   if a.item_id in self._items and self._items[a.item_id].session < item.session]
        if not earlier:
            return None
        return max(earlier) + datetime.timedelta(days=self.definition.washout_days)

    # Showing a case

    def clearCase(self) -> None:
        """Remove the nodes of the item shown: its volumes, then their display nodes (a slice view still showing a
        volume would give it a new display node)."""
        for node in self._caseNodes:
            if node.GetScene() is not None:
                displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
                slicer.mrmlScene.RemoveNode(node)
                for display in displays:
                    if display is not None and display.GetScene() is not None:
                        slicer.mrmlScene.RemoveNode(display)
        self._caseNodes = []
        self._shownAt = None

    def showCurrentItem(self):
        """Show the current item in its layout and start its reading clock; return the item, or None (nothing to
        show: all answered, or the next session's washout has not passed)."""
        self.clearCase()
        item = self.currentItem
        if item is None:
            return None
        opens = self.sessionOpensAt(item)
        if opens is not None and datetime.datetime.now(datetime.timezone.utc) < opens:
            return None
        study = studyModule()
        volumes = {}
        for view in (reading.PA, reading.LATERAL):
            if view in item.radiographs:
                volumes[view] = self._addVolume(self.studyFolder / study.RADIOGRAPHS_DIR / item.radiographs[view],
                                                RADIOGRAPH_NAMES[view])
        if item.volume:
            volumes[reading.CT] = self._addVolume(self.studyFolder / study.VOLUMES_DIR / item.volume, CASE_CT_NAME)
            level, width = self.definition.window_hu
            display = volumes[reading.CT].GetScalarVolumeDisplayNode()
            display.SetAutoWindowLevel(0)
            display.SetWindowLevel(float(width), float(level))
        self.showLayout(item, volumes)
        self._shownAt = self.clock()
        return item

    def _addVolume(self, path: Path, name: str):
        """A volume node of the image file, read with SimpleITK so that the node has no storage node: neither the
        file name nor the folder reaches the scene."""
        import SimpleITK as sitk
        import X2CTReconLib

        from x2ct.errors import InputError

        if not path.is_file():
            raise InputError(path, "is missing from the study folder; ask the coordinator")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError(path, "could not be read as an image; ask the coordinator") from None
        node = slicer.util.addVolumeFromArray(X2CTReconLib.voxelArrayFromImage(image),
                                              ijkToRAS=X2CTReconLib.ijkToRASFromImage(image), name=name)
        node.GetScalarVolumeDisplayNode().SetInterpolate(1)
        self._caseNodes.append(node)
        return node

    def showLayout(self, item, volumes: Dict) -> None:
        """The item's fixed layout (reading.layoutFor): each slice view shows one volume, nothing on top, no ruler
        and no orientation marker. Nothing to do without views (e.g. ``Slicer --no-main-window``)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layout = reading.layoutFor(item)
        layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if not layoutNode.IsLayoutDescription(layout):
            layoutNode.AddLayoutDescription(layout, reading.layoutDescription(layout))
        layoutManager.setLayout(layout)
        for viewName, role, orientation in reading.layoutViews(layout):
            sliceWidget = layoutManager.sliceWidget(viewName)
            sliceNode, sliceLogic = sliceWidget.mrmlSliceNode(), sliceWidget.sliceLogic()
            composite = sliceLogic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(volumes[role].GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            if role == reading.CT:
                sliceNode.SetOrientation(orientation)
            else:
                sliceNode.RotateToVolumePlane(volumes[role])
            sliceNode.SetRulerType(sliceNode.RulerTypeNone)
            sliceNode.SetOrientationMarkerType(sliceNode.OrientationMarkerTypeNone)
            sliceLogic.FitSliceToAll()

    # Answering

    def lockAnswer(self, answers: Dict[str, object]):
        """Check the answers to the item shown, append them with the reading time (monotonic seconds since it was
        shown) to the reader's answer file (fsync'ed before returning) and move to the first unanswered item.
        Returns the locked ``Answer``; ValueError (nothing written) for a missing or invalid answer."""
        item = self.currentItem
        if item is None or self._shownAt is None:
            raise ValueError("No item is shown.")
        checked = reading.checkAnswers(self.currentQuestions(), answers)
        study = studyModule()
        answer = study.Answer(
            reader=self.reader, item_id=item.item_id, answers=checked,
            reading_time_s=round(max(0.0, self.clock() - self._shownAt), 3),
            locked_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        study.append_answer(self.studyFolder, answer)
        self.answers.append(answer)
        self.clearCase()
        self.position = study.next_unanswered(self.order, self.answers)
        return answer

    def canGoBack(self) -> bool:
        last = self.itemCount() if self.position is None else self.position
        return self.allowBack and last > 0

    def goBack(self):
        """Show the item before the current one again (only when the study allows going back); its new answer will
        supersede the old one (study.latest_answers)."""
        if not self.canGoBack():
            raise ValueError(_("This study does not allow going back.") if not self.allowBack
                             else _("This is the first item."))
        self.position = (self.itemCount() if self.position is None else self.position) - 1
        return self.showCurrentItem()

    # Errors

    @staticmethod
    def errorMessage(error: BaseException) -> str:
        """The reader's one-line message; an unexpected error is logged with its traceback."""
        from x2ct.errors import InputError

        if isinstance(error, (InputError, ValueError)):
            return str(error)
        logging.error("X2CTReaderStudy: unexpected error", exc_info=(type(error), error, error.__traceback__))
        return _("X2CT Reader Study failed: {kind}: {text}. Your locked answers are saved; see the error log.").format(
            kind=type(error).__name__, text=str(error).splitlines()[0] if str(error) else "")


def _parseTime(text: str) -> datetime.datetime:
    """An ISO 8601 UTC time as written in Answer.locked_at (Python 3.9's fromisoformat does not take a "Z")."""
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


#
# X2CTReaderStudyTest
#


class X2CTReaderStudyTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer ("Reload and Test" or ctest), on a tiny study written in a temporary folder (no
    network, no GPU, no torch). The same checks run on slicer-core's MRML in Testing/test_reader_study_panel.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReadAndResume()

    def test_ReadAndResume(self):
        from X2CTReaderStudyLib import selftest

        self.delayDisplay("Reading a tiny study")
        folder = Path(slicer.util.tempDirectory("X2CTReaderStudyTest"))
        files = selftest.makeStudy(folder)
        logic = X2CTReaderStudyLogic()
        self.assertEqual(logic.openStudy(str(folder), "tester"), 0)
        item = logic.showCurrentItem()
        self.assertEqual(selftest.revealingTexts(slicer.mrmlScene, selftest.blindingSecrets(folder, files)), [])
        answers = {q.key: (q.choices[0] if q.choices else q.high) for q in logic.currentQuestions()}
        locked = logic.lockAnswer(answers)
        self.assertEqual(locked.item_id, item.item_id)
        resumed = X2CTReaderStudyLogic()
        self.assertEqual(resumed.openStudy(str(folder), "tester"), 1)
        logic.clearCase()
        self.delayDisplay("Test passed")
