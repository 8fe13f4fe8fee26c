"""The ``x2ct`` command line.

Error contract for every command: a user-caused problem prints one line
``x2ct: error: <file>: <problem>`` to stderr and exits with status 2, with no traceback and no
partial output (every output is written under a temporary name and renamed when complete).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import __version__
from .errors import InputError

PROG = "x2ct"
EXIT_USER_ERROR = 2
SAMPLE = "sample"
"""``--synthetic-from`` value (also its default when given alone) meaning the bundled real CT."""


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _print_fields(data: dict) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key:<{width}}  {value}")


def info_dict(path: str, view: Optional[str] = None) -> dict:
    """The ``x2ct info`` record of a radiograph or CT (JSON-serialisable)."""
    from .io import ct_info, read_ct, read_radiograph
    from .io.kind import CT, detect_kind

    if detect_kind(path) == CT:
        if view is not None:
            raise InputError(path, "holds a CT volume, not a radiograph (--view applies to radiographs only)")
        return {"kind": "ct", "path": str(path), **ct_info(read_ct(path))}
    radiograph = read_radiograph(path, view=view)
    meta = radiograph.metadata
    return {
        "kind": "radiograph",
        "path": str(path),
        "size": list(radiograph.pixels.shape),
        "spacing_mm": list(radiograph.spacing_mm) if radiograph.spacing_mm else None,
        "view": radiograph.view,
        "photometric": meta.get("photometric"),
        "inverted": meta.get("inverted"),
        "body_part": meta.get("body_part"),
        "transfer_syntax": meta.get("transfer_syntax"),
        "format": meta.get("format"),
        "warnings": list(radiograph.warnings),
    }


def cmd_info(args: argparse.Namespace) -> int:
    data = info_dict(args.file, view=args.view)
    _print_json(data) if args.json else _print_fields(data)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .geometry import to_canonical
    from .io import read_ct, write_volume
    from .io.volume import VOLUME_SUFFIXES, volume_suffix

    if not volume_suffix(args.output):
        raise InputError(args.output, f"unknown output format; use one of {', '.join(VOLUME_SUFFIXES)}")
    image = read_ct(args.input)
    if args.canonical:
        image = to_canonical(image, size=args.size)
    write_volume(image, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_drr(args: argparse.Namespace) -> int:
    from .drr import DRRGeometry, write_drrs
    from .io import read_ct
    from .views import LATERAL, PA

    if args.size < 16 or args.size > 2048:
        raise InputError(None, f"--size {args.size}: choose a detector size between 16 and 2048 pixels")
    try:
        geometry = DRRGeometry(sad_mm=args.sad, sid_mm=args.sid, detector_mm=args.detector_mm)
    except ValueError as err:
        raise InputError(None, f"--sad/--sid/--detector-mm: {err}") from None
    chosen = {"pa": (PA,), "lateral": (LATERAL,), "both": (PA, LATERAL)}[args.view]
    ct = read_ct(args.ct)
    written = write_drrs(ct, args.output, views=chosen, size=args.size, geometry=geometry, device=args.device)
    for paths in written.values():
        print(f"wrote {paths['png']} and {paths['nrrd']}")
    return 0


def _parse_ratios(text: str) -> tuple:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(None, f"--split {text}: give three fractions like 0.8,0.1,0.1") from None


def cmd_build_dataset(args: argparse.Namespace) -> int:
    from .data.builder import BuildOptions, build_dataset, build_synthetic_dataset
    from .drr import DRRGeometry
    from .resources import sample_ct_path, sample_labels_path

    try:
        geometry = DRRGeometry(sad_mm=args.sad, sid_mm=args.sid, detector_mm=args.detector_mm)
    except ValueError as err:
        raise InputError(None, f"--sad/--sid/--detector-mm: {err}") from None
    options = BuildOptions(
        size=args.size,
        drr_size=args.drr_size or args.size,
        workers=args.workers,
        seed=args.seed,
        ratios=_parse_ratios(args.split),
        geometry=geometry,
    )
    if args.synthetic_from is None:
        if args.input is None:
            raise InputError(None, "give INPUT (a folder of CTs or a list file) or --synthetic-from")
        report = build_dataset(args.input, args.output, options)
    else:
        if args.input is not None:
            raise InputError(args.input, "give either INPUT or --synthetic-from, not both")
        sample = args.synthetic_from == SAMPLE
        if not sample and args.labels is None:
            raise InputError(args.synthetic_from, "--labels LABEL_MAP is needed with your own CT")
        ct = sample_ct_path() if sample else Path(args.synthetic_from)
        labels = Path(args.labels) if args.labels else sample_labels_path()
        report = build_synthetic_dataset(ct, labels, args.output, args.cases, options)
    print(report.summary())
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chest radiographs to synthetic chest CT. Research use only; not for diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="describe a chest radiograph or CT (DICOM, PNG/JPEG/TIFF, NIfTI, NRRD, MHA)")
    p.add_argument("file", help="radiograph file, CT file, or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--view", help="override the radiograph view (PA, AP, LATERAL)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a CT between formats, optionally onto the canonical 320 mm grid")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("output", help="output .nrrd, .nii, .nii.gz or .mha")
    p.add_argument("--canonical", action="store_true", help="resample onto the canonical body-centred 320 mm cube")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256), help="canonical grid size (default 128)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("drr", help="render digitally reconstructed radiographs (PA, lateral) of a CT")
    p.add_argument("ct", help="CT file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder for pa/lateral .png (16-bit) and .nrrd")
    p.add_argument("--view", choices=("pa", "lateral", "both"), default="both", help="which views (default both)")
    p.add_argument("--size", type=int, default=128, help="detector pixels per side (default 128)")
    p.add_argument("--sad", type=float, default=541.0, help="source-isocentre distance in mm (default 541)")
    p.add_argument("--sid", type=float, default=949.0, help="source-detector distance in mm (default 949)")
    p.add_argument("--detector-mm", type=float, default=500.0, help="detector edge in mm (default 500)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.set_defaults(func=cmd_drr)

    p = sub.add_parser(
        "build-dataset",
        help="build paired CT / PA / lateral DRR HDF5 files (official layout) and a split manifest",
        description="Build OUT/<case>/ct_xray_data.h5 for every CT of INPUT (a folder: each CT file or DICOM "
        "series subfolder is a case; or a .txt/.csv list, one path per line), or a labelled synthetic benchmark "
        "from one CT with --synthetic-from. Finished cases are skipped; a failing case is reported and the rest "
        "build. Exit status 0 when at least one case is finished, 2 when every case failed or on a usage error.",
    )
    p.add_argument("input", nargs="?", help="folder of CTs, or a .txt/.csv list of CT paths")
    p.add_argument("output", metavar="OUT", help="output folder (created; resumable)")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256), help="canonical grid size (default 128)")
    p.add_argument("--drr-size", type=int, help="DRR pixels per side (default: --size)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; same results as 1)")
    p.add_argument("--seed", type=int, default=0, help="split salt and synthetic generator seed (default 0)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument(
        "--synthetic-from",
        nargs="?",
        const=SAMPLE,
        metavar="CT",
        help=f"build a synthetic labelled benchmark from one CT ('{SAMPLE}' or nothing: the bundled chest CT)",
    )
    p.add_argument("--labels", help="label map of the --synthetic-from CT (default: the bundled one's)")
    p.add_argument("--cases", type=int, default=10, help="number of synthetic cases (default 10)")
    p.add_argument("--sad", type=float, default=541.0, help="source-isocentre distance in mm (default 541)")
    p.add_argument("--sid", type=float, default=949.0, help="source-detector distance in mm (default 949)")
    p.add_argument("--detector-mm", type=float, default=500.0, help="detector edge in mm (default 500)")
    p.set_defaults(func=cmd_build_dataset)

    p = sub.add_parser("demo", help="run the demo on the bundled sample data")
    p.add_argument("-o", "--output", default="x2ct-demo", help="output folder (default ./x2ct-demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def _user_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``x2ct`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    handlers: Dict[type, Callable[[BaseException], str]] = {
        InputError: str,
        PermissionError: lambda e: f"{e.filename}: permission denied",
        IsADirectoryError: lambda e: f"{e.filename}: is a folder, expected a file",
        NotADirectoryError: lambda e: f"{e.filename}: a parent of this path is not a folder",
    }
    try:
        return args.func(args)
    except tuple(handlers) as err:
        return _user_error(next(h(err) for t, h in handlers.items() if isinstance(err, t)))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
