"""A prediction's output folder: ``synthetic_ct.nrrd``, ``summary.json``, ``report.png``, findings, heat maps, DICOM,
and for stochastic generators sampled more than once ``uncertainty_sd_hu.nrrd``.

:func:`write_prediction` writes the folder atomically (it appears complete or not at all);
:func:`check_output_dir` refuses a folder that holds anything but an earlier prediction;
:func:`is_finished` tells a finished one. On disk, heat maps and findings use the input keys of
:mod:`x2ct.views` (``<output>_ct.nrrd``, ``<output>_pa.nrrd`` ...); ``summary.json`` keys its inputs
and scores by view name (``PA``, ``LATERAL``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..atomic import atomic_dir
from ..errors import InputError, PathLike
from ..geometry import AXIS_DIRECTIONS
from ..gradcam import cam_overlay_rgb, cam_volume_image
from ..io import SyntheticProvenance, write_synthetic_ct_series
from ..io.dicom_ct import source_from_dataset
from ..userfiles import check_output_folder
from ..views import CT_KEY, PA, input_key
from .findings import findings_document
from .report import report_picture
from .synthetic_ct import SYNTHETIC_NOTE
from .types import (
    OUTPUT_CT,
    OUTPUT_DICOM,
    OUTPUT_FINDINGS,
    OUTPUT_GRADCAM,
    OUTPUT_REPORT,
    OUTPUT_SUMMARY,
    OUTPUT_UNCERTAINTY,
    Prediction,
)

SUMMARY_FINDING_FIELDS = ("output", "probability", "threshold", "call", "model")
"""The fields of each finding repeated in ``summary.json``."""


def summary_document(prediction: Prediction) -> Dict[str, Any]:
    """The ``summary.json`` record of ``prediction`` without ``outputs`` (JSON-serialisable).

    ``style``: the style model applied to the inputs ({name, path, sha256}) or null. ``ood``: the
    out-of-distribution score next to the re-projection consistency ({score, threshold, flagged, per_view,
    method}) or null when the model has no reference. ``sampling`` (stochastic generators only): samples, sampler,
    steps and guidance (null: the model's default), seed, and ``uncertainty`` (the SD map's file, null for one
    sample).
    """
    grid = prediction.grid
    model = prediction.model
    document = {
        "synthetic": SYNTHETIC_NOTE,
        "x2ct_version": __version__,
        "model": {
            "name": model.name,
            "path": model.path,
            "architecture": model.architecture,
            "views": list(model.views),
            "weights_sha256": model.sha256,
        },
        "device": str(model.device),
        "inputs": {view: prepared.record for view, prepared in prediction.views.items()},
        "preprocessing": model.spec.to_dict(),
        "output": {
            "grid_size": grid.size,
            "spacing_mm": [grid.spacing_mm] * 3,
            "origin_lps_mm": [round(v, 4) for v in grid.origin_lps],
            "direction_lps": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
            "array_axes": f"D,H,W = {', '.join(AXIS_DIRECTIONS)}",
            "units": "HU",
        },
        "consistency": {
            "score": prediction.consistency_score,
            "per_view": prediction.consistency,
            "method": "cone-beam re-projection with the training DRR geometry vs the preprocessed input; "
            "ncc = Pearson correlation, ssim = SSIM (7x7, data range 1)",
        },
        "ood": None if prediction.ood is None else prediction.ood.to_dict(),
        "style": None if prediction.style is None else prediction.style.to_dict(),
        "findings": [{name: getattr(f, name) for name in SUMMARY_FINDING_FIELDS} for f in prediction.findings],
        "timings_s": prediction.timings_s,
        "warnings": prediction.warnings,
    }
    if prediction.sampling is not None:
        uncertainty = None if prediction.uncertainty_sd_hu is None else OUTPUT_UNCERTAINTY
        document["sampling"] = {**prediction.sampling.to_dict(), "uncertainty": uncertainty}
    return document


def _dicom_sources(prediction: Prediction) -> List[Dict[str, str]]:
    """SourceImageSequence entries (with patient/study) for the inputs that were DICOM."""
    from ..io.dicom_compat import dcmread
    from ..io.library_output import library_output

    sources = []
    for prepared in prediction.views.values():
        meta = prepared.radiograph.metadata
        if meta.get("format") == "dicom" and meta.get("sop_instance_uid") and meta.get("study_instance_uid"):
            with library_output("DICOM decoder"):  # its warnings were kept when the file was first read
                header = dcmread(meta["path"], stop_before_pixels=True)
            sources.append(source_from_dataset(header))
    return sources


def check_output_dir(out_dir: PathLike) -> Path:
    """Refuse an output folder that :func:`x2ct.userfiles.check_output_folder` refuses, or that exists and holds
    anything but an earlier prediction (InputError)."""
    out = check_output_folder(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / OUTPUT_SUMMARY).is_file():
        raise InputError(out, "output folder exists and is not empty (and is not an earlier x2ct prediction)")
    return out


def _write_findings(prediction: Prediction, ct_image: sitk.Image, folder: Path) -> List[str]:
    """``findings.json`` and ``gradcam/``: per output ``<output>_ct.nrrd`` (float32 map on the synthetic CT's
    grid), ``<output>_pa.nrrd`` / ``_lateral.nrrd`` (float32 map on the radiograph's pixel grid, its spacing
    when known; for a radiograph reduced f times, the reduced grid, with the file's pixel 0 at the origin) and
    ``<output>_pa.png`` / ``_lateral.png`` (heat map over the radiograph). Returns the names."""
    from PIL import Image

    document = findings_document(prediction)
    (folder / OUTPUT_FINDINGS).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if not document["gradcam"]:
        return [OUTPUT_FINDINGS]
    cam_dir = folder / OUTPUT_GRADCAM
    cam_dir.mkdir()
    for output, cam in prediction.heat_maps.ct.items():
        sitk.WriteImage(cam_volume_image(cam, ct_image), str(cam_dir / f"{output}_{CT_KEY}.nrrd"), useCompression=True)
    for view, maps in prediction.heat_maps.radiographs.items():
        radiograph = prediction.views[view].radiograph
        for output, cam in maps.items():
            stem = cam_dir / f"{output}_{input_key(view)}"
            image = sitk.GetImageFromArray(cam.astype(np.float32))
            if radiograph.spacing_mm:
                spacing = (float(radiograph.spacing_mm[1]), float(radiograph.spacing_mm[0]))
                image.SetSpacing(spacing)
                # reduced f times: map pixel 0 is the mean of file pixels 0..f-1, whose centre is (f-1)/2 file pixels
                factor = int(radiograph.metadata.get("reduction") or 1)
                image.SetOrigin(tuple((factor - 1) / 2 * s / factor for s in spacing))
            # fastest zlib level: these maps are as large as the radiograph (up to 2048 x 2048) and one per output
            sitk.WriteImage(image, f"{stem}.nrrd", useCompression=True, compressionLevel=1)
            Image.fromarray(cam_overlay_rgb(radiograph.pixels, cam)).save(f"{stem}.png", format="PNG", compress_level=1)
    return [OUTPUT_FINDINGS, OUTPUT_GRADCAM + "/"]


def write_prediction(
    prediction: Prediction, out_dir: PathLike, dicom: bool = False, extra_timings: Optional[Dict[str, float]] = None
) -> Path:
    """Write ``synthetic_ct.nrrd``, ``report.png``, ``summary.json`` (``uncertainty_sd_hu.nrrd`` with an SD map,
    ``findings.json`` and ``gradcam/`` when classifiers ran, ``dicom/`` with ``dicom``) into ``out_dir``
    atomically: the folder appears complete or not at all (an earlier one is replaced whole)."""
    out = check_output_dir(out_dir)
    t = time.perf_counter()
    with atomic_dir(out) as tmp:
        image = prediction.image()
        sitk.WriteImage(image, str(tmp / OUTPUT_CT), useCompression=True)
        report_picture(prediction).save(tmp / OUTPUT_REPORT, format="PNG")
        outputs = [OUTPUT_CT, OUTPUT_REPORT, OUTPUT_SUMMARY]
        uncertainty = prediction.uncertainty_image()
        if uncertainty is not None:
            sitk.WriteImage(uncertainty, str(tmp / OUTPUT_UNCERTAINTY), useCompression=True)
            outputs.append(OUTPUT_UNCERTAINTY)
        if prediction.findings:
            outputs += _write_findings(prediction, image, tmp)
        if dicom:
            views = " and ".join("PA" if v == PA else "lateral" for v in prediction.views)
            provenance = SyntheticProvenance(
                model_name=prediction.model.name,
                model_version=prediction.model.metadata.version,
                weights_sha256=prediction.model.sha256 or "unknown",
                inputs_description=f"{views} chest radiograph{'s' if len(prediction.views) > 1 else ''}",
                sources=_dicom_sources(prediction),
            )
            write_synthetic_ct_series(image, tmp / OUTPUT_DICOM, provenance)
            outputs.append(OUTPUT_DICOM + "/")
        summary = summary_document(prediction)
        summary["timings_s"] = {**summary["timings_s"], **(extra_timings or {})}
        summary["timings_s"]["write"] = round(time.perf_counter() - t, 3)
        summary["outputs"] = outputs
        (tmp / OUTPUT_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def is_finished(out_dir: PathLike) -> bool:
    """True when ``out_dir`` holds a complete prediction (written atomically, so summary.json means done)."""
    return (Path(out_dir) / OUTPUT_SUMMARY).is_file() and (Path(out_dir) / OUTPUT_CT).is_file()
