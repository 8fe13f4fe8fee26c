"""Blinded reader studies of real vs synthetic CT: build the study folder, read it in Slicer, analyse it (MRMC).

``study`` owns the folder layout and its records; ``build`` writes a study from a case list;
``analyze`` turns the answers into statistics and a report. See docs/reader_study.md.
"""
