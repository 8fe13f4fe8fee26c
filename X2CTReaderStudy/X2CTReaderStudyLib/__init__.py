"""Slicer-side helpers of the X2CTReaderStudy module that need neither ``slicer`` nor Qt.

The study folder and its records belong to ``x2ct.readerstudy.study`` (standard library only, so
Slicer's Python 3.9 reads it without torch); ``reading`` holds what the panel asks per item, the
checks of an answer, the keyboard shortcuts and the view layouts, all testable with plain pytest.
"""

from __future__ import annotations


def studyModule():
    """``x2ct.readerstudy.study``, from the ``x2ct`` copy that ships with X2CTRecon (X2CTReconLib.addBundledX2CTToPath).

    Imported on first use so that loading the module in Slicer never needs ``x2ct``.
    """
    import X2CTReconLib

    X2CTReconLib.addBundledX2CTToPath()
    from x2ct.readerstudy import study

    return study
