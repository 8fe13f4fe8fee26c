"""Time and peak memory of ``x2ct info`` and ``x2ct predict`` on large radiographs, per file format.

Run from the repository root, in the package's environment (pydicom 3 for the JPEG 2000 encoder)::

    python bench/large_inputs.py                # about 15 minutes on 2 vCPUs

What is measured
----------------
* Images: a synthetic 12-bit chest-like radiograph (body ellipse, dark lungs, bright spine, heart,
  plus uniform noise of 300 levels so that lossless compression is realistic, about 2x). For each
  nominal long side L in 2048, 4300 (the largest chest detectors: 43 cm at 0.1 mm), 8000 and 12000
  pixels, the largest accepted image of that side: L x L when L x L is within
  ``x2ct.io.radiograph.MAX_PIXELS``, else L x (MAX_PIXELS // L). The squares L x L over the limit and
  12000 x 8333 (the 100-megapixel PNG of the original report) are run too, and must be refused.
  A 512 x 512 PNG gives the fixed cost (imports, model loading) for comparison.
* Formats: 16-bit PNG (Pillow, compress_level 1), 16-bit TIFF (Adobe deflate), and DICOM DX
  (MONOCHROME2, BitsStored 12, PixelSpacing 0.1 mm) as Explicit VR Little Endian, Deflated Explicit VR
  Little Endian and JPEG 2000 Lossless. For the refused sizes the JPEG 2000 file is crafted, not
  encoded (a small codestream whose SIZ marker and Rows/Columns declare the size): refusal reads only
  the header, and encoding 144 megapixels would take minutes.
* Commands: ``x2ct info FILE --json`` and ``x2ct predict --pa FILE -o DIR --device cpu`` (the default
  single-view model and every bundled classifier, so Grad-CAM maps are written), each in a fresh
  child process started through a small wrapper that reports ``resource.getrusage(RUSAGE_CHILDREN)``
  for its one child: peak RSS (``ru_maxrss``), CPU seconds (user + system); the wall time is measured
  around the child. The 1-minute load average is recorded before each run: the machine may be shared,
  and other processes inflate wall times (CPU seconds are less affected).
* Target: peak RSS under 1.5 GB and wall time under 20 s for every accepted input on 2 cores; refused
  inputs must exit 2 with one line naming the file.

Outputs: ``docs/large_inputs.json`` and the table between the markers of ``docs/large_inputs.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from drr import cpu_model, git_revision, write_doc_table
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

import x2ct
from x2ct.io.dicom_compat import save_part10, set_pixel_data
from x2ct.io.radiograph import MAX_PIXELS, MAX_SIDE_PX, WORKING_MAX_SIDE_PX

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "docs" / "large_inputs.json"
DEFAULT_DOC = REPO / "docs" / "large_inputs.md"
MARKERS = ("<!-- bench:large_inputs:start -->", "<!-- bench:large_inputs:end -->")

TARGET_RSS_MB = 1500.0
"""Peak resident memory every accepted input must stay under (MB of 10**6 bytes: 1.5 GB)."""
TARGET_WALL_S = 20.0
"""Wall time every accepted input must stay under on 2 cores (seconds)."""

LONG_SIDES = (2048, 4300, 8000, 12000)
FORMATS = ("png", "tiff", "dicom", "dicom-deflate", "dicom-j2k")
BITS_STORED = 12
SPACING_MM = 0.1

# The child wrapper: runs argv[2:], then writes its only child's peak RSS (KiB) and CPU seconds to argv[1].
_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.err', 'w'))\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "json.dump({'rc': rc, 'maxrss_kib': usage.ru_maxrss, 'cpu_s': usage.ru_utime + usage.ru_stime},"
    " open(sys.argv[1], 'w'))\n"
)


# ------------------------------------------------------------------------------------------- images


def sizes_for(long_side: int) -> Tuple[Tuple[int, int], Optional[Tuple[int, int]]]:
    """(the largest accepted rows x columns with this long side, the refused square or None)."""
    if long_side * long_side <= MAX_PIXELS:
        return (long_side, long_side), None
    return (long_side, MAX_PIXELS // long_side), (long_side, long_side)


def radiograph(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A chest-like uint16 image with values 0..2**BITS_STORED - 1 (see the module doc), built at 1/8 scale and
    enlarged, then noise added band by band (so that no float copy of the whole image is made)."""
    small_rows, small_cols = -(-rows // 8), -(-cols // 8)
    y, x = np.mgrid[0:small_rows, 0:small_cols].astype(np.float32)
    y, x = y / max(small_rows - 1, 1), x / max(small_cols - 1, 1)
    level = np.zeros((small_rows, small_cols), np.float32)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 <= 1.0
    level[body] = 0.45
    for centre in (0.3, 0.7):
        level[((x - centre) / 0.15) ** 2 + ((y - 0.42) / 0.28) ** 2 <= 1.0] = 0.12
    level[((x - 0.6) / 0.12) ** 2 + ((y - 0.62) / 0.12) ** 2 <= 1.0] = 0.6
    level[body & (np.abs(x - 0.5) <= 0.06)] = 0.9
    noise = 300
    small = np.rint(level * (2**BITS_STORED - 1 - noise)).astype(np.uint16)
    image = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:rows, :cols]
    rng = np.random.default_rng(seed)
    for top in range(0, rows, 1024):
        band = image[top : top + 1024]
        band += rng.integers(0, noise, band.shape, dtype=np.uint16)
    return image


def dicom_dataset(pixels: np.ndarray) -> Dataset:
    """A DX For Presentation data set holding ``pixels`` (MONOCHROME2, BitsStored 12, 0.1 mm, chest, PA)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.PatientName, ds.PatientID = "Bench^Large", "BENCH"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    set_pixel_data(ds, pixels, "MONOCHROME2", BITS_STORED)
    return ds


def crafted_j2k(path: Path, rows: int, cols: int) -> None:
    """A JPEG 2000 DICOM whose Rows/Columns and codestream SIZ declare rows x cols; its codestream is that of a
    64 x 64 image (the refusal must come from the header alone)."""
    ds = dicom_dataset(radiograph(64, 64))
    ds.compress(JPEG2000Lossless)
    data = bytearray(ds.PixelData)
    at = data.find(b"\xff\x4f\xff\x51")
    data[at + 8 : at + 16] = cols.to_bytes(4, "big") + rows.to_bytes(4, "big")  # Xsiz, Ysiz
    ds.PixelData, ds.Rows, ds.Columns = bytes(data), rows, cols
    save_part10(ds, path)


def write_formats(folder: Path, rows: int, cols: int, crafted: bool) -> Dict[str, Path]:
    """The image of ``rows`` x ``cols`` in every format of FORMATS; returns the paths by format."""
    pixels = radiograph(rows, cols)
    paths = {fmt: folder / f"{rows}x{cols}-{fmt}.{fmt if fmt in ('png', 'tiff') else 'dcm'}" for fmt in FORMATS}
    Image.fromarray(pixels).save(paths["png"], compress_level=1)
    Image.fromarray(pixels).save(paths["tiff"], compression="tiff_adobe_deflate")
    ds = dicom_dataset(pixels)
    del pixels
    save_part10(ds, paths["dicom"])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save_part10(ds, paths["dicom-deflate"])
    if crafted:
        crafted_j2k(paths["dicom-j2k"], rows, cols)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(JPEG2000Lossless)
        save_part10(ds, paths["dicom-j2k"])
    return paths


# --------------------------------------------------------------------------------------------- runs


def run_child(command: Sequence[str], scratch: Path) -> Dict[str, Any]:
    """Run ``command`` in a fresh child (through the wrapper); wall s, CPU s, peak RSS MB, exit status, last
    stderr line."""
    report = scratch / "child.json"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *command], check=True)
    wall = time.perf_counter() - start
    usage = json.loads(report.read_text())
    err = Path(str(report) + ".err").read_text().strip().splitlines()
    return {
        "rc": usage["rc"],
        "wall_s": round(wall, 2),
        "cpu_s": round(usage["cpu_s"], 2),
        "peak_rss_mb": round(usage["maxrss_kib"] * 1024 / 1e6, 1),
        "load_1min_before": round(load, 2),
        "stderr_last_line": err[-1] if err else "",
    }


def x2ct_command(*args: str) -> List[str]:
    """``x2ct ARGS`` with this interpreter."""
    return [sys.executable, "-c", "import sys; from x2ct.cli import main; sys.exit(main())", *args]


def meets_target(row: Dict[str, Any]) -> bool:
    """Accepted: both commands succeeded under the RSS and wall-time targets; refused: both exited 2."""
    runs = [row[key] for key in ("info", "predict") if key in row]
    if row["expected"] == "refused":
        return all(r["rc"] == 2 and r["stderr_last_line"].startswith("x2ct: error: ") for r in runs)
    return all(r["rc"] == 0 and r["peak_rss_mb"] < TARGET_RSS_MB and r["wall_s"] < TARGET_WALL_S for r in runs)


def bench_file(path: Path, fmt: str, rows: int, cols: int, expected: str, scratch: Path,
               predict: bool) -> Dict[str, Any]:
    """info (and predict) on one file; the JSON row."""
    row: Dict[str, Any] = {
        "rows": rows, "cols": cols, "megapixels": round(rows * cols / 1e6, 1), "format": fmt, "expected": expected,
        "file_mb": round(path.stat().st_size / 1e6, 1),
    }
    row["info"] = run_child(x2ct_command("info", str(path), "--json"), scratch)
    if predict:
        out = scratch / f"out-{path.stem}"
        row["predict"] = run_child(x2ct_command("predict", "--pa", str(path), "-o", str(out), "--device", "cpu"),
                                   scratch)
        summary = out / "summary.json"
        if summary.is_file():
            document = json.loads(summary.read_text())
            row["predict"]["timings_s"] = document["timings_s"]
            row["predict"]["size_px"] = document["inputs"]["PA"]["size_px"]
    row["meets_target"] = meets_target(row)
    print(json.dumps(row), flush=True)
    return row


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """The whole benchmark; returns the JSON-ready results."""
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="x2ct-large-") as tmp:
        folder = Path(tmp)
        baseline = folder / "512x512-png.png"
        Image.fromarray(radiograph(512, 512)).save(baseline)
        rows.append(bench_file(baseline, "png", 512, 512, "accepted", folder, not args.no_predict))
        cases = []
        for side in args.long_sides:
            accepted, refused = sizes_for(side)
            cases.append((accepted, "accepted"))
            if refused:
                cases.append((refused, "refused"))
        reported = (12000, 8333)  # the 100-megapixel PNG of the original report
        if 12000 in args.long_sides and reported not in [size for size, _ in cases]:
            cases.append((reported, "refused" if reported[0] * reported[1] > MAX_PIXELS else "accepted"))
        for (n_rows, n_cols), expected in cases:
            paths = write_formats(folder, n_rows, n_cols, crafted=expected == "refused")
            for fmt in args.formats:
                rows.append(bench_file(paths[fmt], fmt, n_rows, n_cols, expected, folder, not args.no_predict))
            for path in paths.values():
                path.unlink()
    return {
        "benchmark": "x2ct info / x2ct predict on large radiographs: wall time and peak RSS per run",
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "git_revision": git_revision(),
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_1_5_15_min_at_end": [round(v, 2) for v in os.getloadavg()],
            "versions": {
                "x2ct": x2ct.__version__,
                **{pkg: version(pkg) for pkg in ("torch", "numpy", "pydicom", "pillow", "SimpleITK",
                                                 "pylibjpeg-openjpeg")},
            },
        },
        "limits": {"MAX_SIDE_PX": MAX_SIDE_PX, "MAX_PIXELS": MAX_PIXELS, "WORKING_MAX_SIDE_PX": WORKING_MAX_SIDE_PX},
        "target": {"peak_rss_mb": TARGET_RSS_MB, "wall_s": TARGET_WALL_S},
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------ reports


def _cell(run: Optional[Dict[str, Any]]) -> str:
    if run is None:
        return "–"
    if run["rc"] != 0:
        return f"exit {run['rc']}, {run['wall_s']:.1f} s, {run['peak_rss_mb']:.0f} MB"
    return f"{run['wall_s']:.1f} s ({run['cpu_s']:.1f} CPU s), {run['peak_rss_mb']:.0f} MB"


def markdown_table(results: Dict[str, Any]) -> str:
    """The results as a markdown table with the machine line above it."""
    machine = results["machine"]
    lines = [
        f"Measured {results['timestamp_utc']} on {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"x2ct {machine['versions']['x2ct']}, torch {machine['versions']['torch']}, pydicom "
        f"{machine['versions']['pydicom']}; load average at the end "
        f"{' / '.join(str(v) for v in machine['load_1_5_15_min_at_end'])} (1 / 5 / 15 min). "
        f"Target: every accepted input under {TARGET_RSS_MB / 1000:.1f} GB peak RSS and {TARGET_WALL_S:.0f} s.",
        "",
        "| image (rows x cols) | Mpx | format | file MB | expected | `x2ct info` | `x2ct predict` "
        "| load before predict | target met |",
        "|---|---:|---|---:|---|---|---|---:|---|",
    ]
    for row in results["rows"]:
        predict = row.get("predict")
        load = f"{predict['load_1min_before']:.1f}" if predict else "–"
        lines.append(
            f"| {row['rows']} x {row['cols']} | {row['megapixels']} | {row['format']} | {row['file_mb']} | "
            f"{row['expected']} | {_cell(row['info'])} | {_cell(predict)} | {load} | "
            f"{'yes' if row['meets_target'] else '**no**'} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--long-sides", type=int, nargs="+", default=list(LONG_SIDES), help="nominal long sides, px")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--no-predict", action="store_true", help="time x2ct info only")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results JSON")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file that receives the table")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run the benchmark and write the JSON and the table."""
    args = parse_args(argv)
    results = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    if args.doc:
        write_doc_table(args.doc, table, MARKERS, "Large inputs: time and memory")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
