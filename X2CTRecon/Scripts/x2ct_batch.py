"""Slicer batch run of X2CT Recon: radiographs in, the outputs of ``x2ct predict`` out. Research use only.

    Slicer --no-main-window --python-script X2CTRecon/Scripts/x2ct_batch.py \\
        --pa PA_FILE [--lateral LATERAL_FILE] -o OUTPUT_DIR \\
        [--model NAME] [--device auto|cpu|cuda] [--dicom] [--force] [--view-override]
        [--style NAME|PATH] [--samples K] [--guidance W]

The radiographs are loaded as volume nodes (as "Add Data" would) and reconstructed by
X2CTReconLogic in blocking mode, without the widget. OUTPUT_DIR receives what ``x2ct predict``
writes, through the same ``x2ct.inference.write_prediction``: synthetic_ct.nrrd, summary.json,
report.png, uncertainty_sd_hu.nrrd for a stochastic model sampled more than once and, with --dicom, dicom/ (a
series marked SYNTHETIC). --style, --samples and --guidance are those of ``x2ct predict``. Nothing is installed here: a
missing dependency is reported (open the module once in the Slicer window to install it).

Exit status: 0 written; 2 a user error (bad or missing input, output folder in use, missing
dependency), one line on stderr; 1 an unexpected failure (traceback in the log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


def parseArguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="x2ct_batch.py",
        description="Synthetic CT (SYNTHETIC, research use only) from a PA and optionally a lateral chest radiograph.",
    )
    parser.add_argument("--pa", required=True, metavar="FILE", help="frontal (PA) radiograph: DICOM, PNG, JPEG, NRRD")
    parser.add_argument("--lateral", metavar="FILE", help="lateral radiograph (selects a biplanar model)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (as x2ct predict -o)")
    parser.add_argument("--model", default="", metavar="NAME", help="bundled model name (default: by the inputs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument("--dicom", action="store_true", help="also write a DICOM series marked synthetic")
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even when a DICOM is not a chest radiograph by its Modality, SOP class or BodyPartExamined",
    )
    parser.add_argument("--view-override", action="store_true", help="trust --pa/--lateral over the view tags")
    parser.add_argument("--style", metavar="NAME|PATH", help="translate the radiographs to DRR style with this "
                        "CycleGAN style model first (bundled name or path)")
    parser.add_argument("--samples", type=int, metavar="K", help="stochastic (diffusion) models: samples per case; "
                        "writes their mean and uncertainty_sd_hu.nrrd (default 8)")
    parser.add_argument("--guidance", type=float, metavar="W", help="stochastic models: radiograph-consistency "
                        "guidance weight (default 0: none)")
    return parser.parse_args(argv)


def loadRadiograph(path: Optional[str]):
    """The radiograph file as a volume node (slicer.util.loadVolume, one file), or None for no path.

    ``show`` is off: Slicer's volume reader otherwise makes every loaded volume the active one and puts
    it in all slice views (qSlicerVolumesReader.cxx), which a batch run has no use for.
    """
    import slicer

    from x2ct.errors import InputError

    if not path:
        return None
    if not Path(path).is_file():
        raise InputError(path, "file not found")
    try:
        return slicer.util.loadVolume(str(path), {"singleFile": True, "show": False})
    except RuntimeError as err:
        raise InputError(path, "Slicer could not load this file as an image") from err


def run(argv: List[str]) -> int:
    """Parse ``argv``, reconstruct, write; returns the exit status."""
    args = parseArguments(argv)
    moduleDir = str(Path(__file__).resolve().parents[1])
    if moduleDir not in sys.path:
        sys.path.insert(0, moduleDir)
    import X2CTRecon

    logic = X2CTRecon.X2CTReconLogic()
    try:
        logic.checkDependencies(requireTorch=True, askConfirmation=False, allowInstall=False)
        from x2ct.inference import check_output_dir

        check_output_dir(args.output)
        paVolume = loadRadiograph(args.pa)
        lateralVolume = loadRadiograph(args.lateral)
        results = logic.process(
            paVolume, lateralVolume, modelName=args.model, device=args.device, force=args.force,
            viewOverride=args.view_override, waitForCompletion=True, showResult=False, style=args.style,
            samples=args.samples, guidance=args.guidance,
            progressCallback=lambda fraction, message: logging.info(f"x2ct_batch: {100 * fraction:3.0f}% {message}"),
        )
        logic.writeOutputFolder(results, args.output, dicom=args.dicom)
    except logic.userErrorTypes() as err:
        print(f"x2ct_batch: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:  # noqa: BLE001 - the exit status reports it; errorMessage logs the trace
        print(f"x2ct_batch: failed: {logic.errorMessage(err)}", file=sys.stderr)
        return EXIT_FAILURE
    prediction = results.prediction
    print(f"x2ct_batch: wrote {args.output} with {prediction.model.name} on {prediction.model.device}; "
          f"re-projection consistency (mean NCC) {prediction.consistency_score:.3f}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
