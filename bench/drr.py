"""Side-by-side benchmark of the x2ct DRR projector against DiffDRR 0.6.1 (trilinear and Siddon), in one run.

Install DiffDRR in the bench environment only (never in the package's or Slicer's environment). The
exact commands used for the committed results (a separate venv; DiffDRR without its 178 dependencies,
plus only what its ``drr``, ``data``, ``pose``, ``detector`` and ``renderers`` modules import)::

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0
    /tmp/benchvenv/bin/pip install --no-deps diffdrr==0.6.1
    /tmp/benchvenv/bin/pip install numpy scipy pandas nibabel fastcore einops torchio
    /tmp/benchvenv/bin/pip install -e X2CTTraining
    /tmp/benchvenv/bin/python bench/drr.py            # from the repository root

(pip reports that diffdrr "requires torchvision, which is not installed"; that and the other declared
dependencies — kornia, pyvista, matplotlib, seaborn, timm, roma, imageio — are only needed by
DiffDRR's registration/visualisation modules, which this benchmark does not import.)

What is compared
----------------
* Volume: the bundled real chest CT (``x2ct.resources.sample_ct_path()``) resampled once onto the
  canonical grid that ``x2ct.drr.render`` uses for the detector size (128 px -> 128³ at 2.5 mm,
  256 px -> 256³ at 1.25 mm), converted once to linear attenuation with ``x2ct.drr.hu_to_mu``. The
  *same* float32 attenuation array is given to both projectors: to ours as an (1, 1, D, H, W)
  tensor, to DiffDRR as the ``density`` of a torchio subject whose affine is the canonical grid's
  IJK->RAS matrix (DiffDRR's ``read`` centres it, so both isocentres are the volume centre).
* Geometry: official X2CT-GAN defaults, SAD 541 mm, SID 949 mm, 500 mm square detector of
  ``size`` x ``size`` pixels (DiffDRR: ``sdd=SID``, ``delx=500/size``, source translation (0, SAD, 0)).
* Views, derived from DiffDRR's detector geometry and verified every run on an asymmetric phantom
  (``orientation_check`` in the JSON): ``read(..., orientation="AP")``, ``reverse_x_axis=False``,
  ZXY Euler angles (pi, 0, 0) = PA (source posterior, row 0 superior, column 0 patient right) and
  (-pi/2, 0, 0) = LATERAL (source at the patient's right, row 0 superior, column 0 anterior). These
  are exactly our display conventions, so no image flip is applied.
* Both outputs are line integrals of the same mu (1/mm x mm = dimensionless), so they are compared
  directly: normalised cross-correlation (NCC, invariant to any per-image affine scaling such as
  min-max), the ratio of means and the relative RMS difference.
* Time: seconds per DRR call on the prepared volume (ours: ``x2ct.drr.project``; DiffDRR: the
  ``DRR`` module's forward with a prepared pose), ``torch.no_grad()``, ``torch.set_num_threads``.
  Building the volume and DiffDRR's module is excluded for both. After warm-up calls the three
  methods are called in an order rotated every repeat (interleaved), so load drifts affect all of
  them alike; the median is reported.
* Memory: for each method and configuration a fresh child process loads the same volume, builds the
  method, then resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5) and renders one
  DRR. Reported are the peak RSS increase during that call (``VmHWM`` after minus ``VmRSS`` before,
  i.e. the transient working set of one render, cold, first call) and the child's whole-process peak
  RSS (``VmHWM``, which includes Python, torch and the volume). Linux only.

Outputs: ``bench/results/drr.json``, the results table between the markers in
``docs/drr_benchmark.md`` and ``docs/images/drr_vs_diffdrr.png`` (ours | DiffDRR trilinear |
difference, PA and lateral, at the largest size).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

import x2ct
from x2ct.drr import DRRGeometry, canonical_grid_size, hu_to_mu, project
from x2ct.geometry import CanonicalGrid, grid_of, to_canonical
from x2ct.resources import sample_ct_path
from x2ct.views import AP, LATERAL, PA

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "results" / "drr.json"
DEFAULT_DOC = REPO / "docs" / "drr_benchmark.md"
DEFAULT_PNG = REPO / "docs" / "images" / "drr_vs_diffdrr.png"
DOC_START, DOC_END = "<!-- bench:drr:start -->", "<!-- bench:drr:end -->"

INSTALL_COMMANDS = [
    "python3 -m venv /tmp/benchvenv",
    "/tmp/benchvenv/bin/pip install torch==2.13.0",
    "/tmp/benchvenv/bin/pip install --no-deps diffdrr==0.6.1",
    "/tmp/benchvenv/bin/pip install numpy scipy pandas nibabel fastcore einops torchio",
    "/tmp/benchvenv/bin/pip install -e X2CTTraining",
]

OURS, TRILINEAR, SIDDON = "x2ct", "diffdrr_trilinear", "diffdrr_siddon"
METHODS = (OURS, TRILINEAR, SIDDON)
VIEWS = (PA, LATERAL)

# DiffDRR pose per view (ZXY Euler angles in radians) for read(orientation="AP"), reverse_x_axis=False.
DIFFDRR_ROTATION = {PA: (math.pi, 0.0, 0.0), AP: (0.0, 0.0, 0.0), LATERAL: (-math.pi / 2, 0.0, 0.0)}

Renderer = Callable[[str], torch.Tensor]


# --------------------------------------------------------------------------------------------- volumes


def canonical_mu(size_px: int, ct_path: Optional[Path] = None) -> Tuple[np.ndarray, CanonicalGrid]:
    """The sample CT on the canonical grid ``x2ct.drr.render`` uses for ``size_px`` pixels, as mu (1/mm), (D, H, W)."""
    ct = sitk.ReadImage(str(ct_path or sample_ct_path()))
    image = to_canonical(ct, size=canonical_grid_size(size_px))
    hu = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))
    return hu_to_mu(hu).numpy(), grid_of(image)


def phantom_mu(grid: CanonicalGrid) -> np.ndarray:
    """An asymmetric attenuation phantom (D, H, W) in 1/mm: flips, transposes and a swapped source side all show.

    A soft-tissue slab, a dense block superior / patient-right / anterior, a smaller dense ball inferior /
    left / posterior, and a rod along W near the anterior wall (so magnification differs between the two
    sides of the isocentre).
    """
    n = grid.size
    d, h, w = np.meshgrid(*(np.linspace(-1.0, 1.0, n),) * 3, indexing="ij")
    mu = np.where((np.abs(d) < 0.7) & (np.abs(h) < 0.5) & (np.abs(w) < 0.6), 0.02, 0.0)
    mu = mu + np.where((d > -0.6) & (d < -0.3) & (h > -0.45) & (h < -0.2) & (w > -0.55) & (w < -0.25), 0.05, 0.0)
    mu = mu + np.where((d - 0.4) ** 2 + (h - 0.3) ** 2 + (w - 0.35) ** 2 < 0.15**2, 0.08, 0.0)
    mu = mu + np.where((np.abs(d - 0.1) < 0.05) & (np.abs(h + 0.4) < 0.05) & (np.abs(w) < 0.5), 0.1, 0.0)
    return mu.astype(np.float32)


# ------------------------------------------------------------------------------------------ renderers


def ours_renderer(mu_dhw: np.ndarray, grid: CanonicalGrid, size: int, geometry: DRRGeometry) -> Renderer:
    """A function view -> (size, size) line integrals from ``x2ct.drr.project`` on the prepared volume."""
    volume = torch.from_numpy(np.ascontiguousarray(mu_dhw))[None, None]
    spacing = grid.spacing_mm

    def render(view: str) -> torch.Tensor:
        with torch.no_grad():
            return project(volume, spacing, view, size, geometry, units="mu")[0, 0]

    return render


def diffdrr_renderer(
    mu_dhw: np.ndarray, grid: CanonicalGrid, size: int, geometry: DRRGeometry, renderer: str
) -> Renderer:
    """A function view -> (size, size) line integrals from a DiffDRR ``DRR`` module on the same volume and geometry.

    The volume goes to torchio in IJK = (W, H, D) order with the canonical grid's IJK->RAS affine;
    DiffDRR's ``read`` centres it on the world origin. Its density is then replaced by our mu, so
    DiffDRR integrates exactly the attenuation we do (its own HU->density mapping is not used).
    """
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    ijk = torch.from_numpy(np.ascontiguousarray(np.transpose(mu_dhw, (2, 1, 0))))[None]
    subject = read(ScalarImage(tensor=ijk, affine=grid.ijk_to_ras()), orientation="AP")
    subject.density.set_data(ijk.clone())
    drr = DRR(
        subject,
        sdd=geometry.sid_mm,
        height=size,
        delx=geometry.detector_spacing_mm(size),
        renderer=renderer,
        reverse_x_axis=False,
    )
    translation = torch.tensor([[0.0, geometry.sad_mm, 0.0]])
    rotations = {view: torch.tensor([rot]) for view, rot in DIFFDRR_ROTATION.items()}

    def render(view: str) -> torch.Tensor:
        with torch.no_grad():
            image = drr(rotations[view], translation, parameterization="euler_angles", convention="ZXY")
        return image[0, 0]

    return render


def make_renderer(method: str, mu_dhw: np.ndarray, grid: CanonicalGrid, size: int, geometry: DRRGeometry) -> Renderer:
    """The renderer for one of :data:`METHODS`."""
    if method == OURS:
        return ours_renderer(mu_dhw, grid, size, geometry)
    return diffdrr_renderer(mu_dhw, grid, size, geometry, "trilinear" if method == TRILINEAR else "siddon")


# ------------------------------------------------------------------------------------------- metrics


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson r over pixels) of two images of the same shape."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom > 0 else float("nan")


def agreement(ours: np.ndarray, other: np.ndarray) -> Dict[str, float]:
    """NCC, mean ratio (other / ours) and RMS difference relative to ours' RMS, on raw line integrals."""
    o, t = np.asarray(ours, np.float64), np.asarray(other, np.float64)
    return {
        "ncc": round(ncc(o, t), 6),
        "mean_ratio": round(float(t.mean() / o.mean()), 5),
        "relative_rms_difference": round(float(np.sqrt(np.mean((t - o) ** 2)) / np.sqrt(np.mean(o**2))), 5),
    }


def flip_nccs(ours: np.ndarray, other: np.ndarray) -> Dict[str, float]:
    """NCC of ``other`` against ours as is and flipped up-down, left-right and both (orientation diagnostics)."""
    variants = {"none": other, "up_down": other[::-1], "left_right": other[:, ::-1], "both": other[::-1, ::-1]}
    return {name: round(ncc(ours, image), 4) for name, image in variants.items()}


def orientation_check(geometry: DRRGeometry, size: int = 64) -> Dict[str, Any]:
    """Render the asymmetric phantom with ours and DiffDRR Siddon and check views, flips and source side.

    Passes when, for PA and LATERAL, DiffDRR's image correlates best with ours unflipped (NCC > 0.99),
    and DiffDRR's PA matches our PA better than our AP (same display, source on the other side).
    """
    grid = CanonicalGrid(size=size)
    mu = phantom_mu(grid)
    ours = ours_renderer(mu, grid, size, geometry)
    theirs = diffdrr_renderer(mu, grid, size, geometry, "siddon")
    result: Dict[str, Any] = {"phantom_grid": size, "detector_px": size}
    passed = True
    for view in VIEWS:
        a, b = ours(view).numpy(), theirs(view).numpy()
        flips = flip_nccs(a, b)
        result[view] = flips
        passed &= max(flips, key=flips.get) == "none" and flips["none"] > 0.99
    pa_vs_ap = {"ours_PA": round(ncc(ours(PA).numpy(), theirs(PA).numpy()), 5)}
    pa_vs_ap["ours_AP"] = round(ncc(ours(AP).numpy(), theirs(PA).numpy()), 5)
    result["diffdrr_PA_against"] = pa_vs_ap
    passed &= pa_vs_ap["ours_PA"] > pa_vs_ap["ours_AP"]
    result["passed"] = bool(passed)
    return result


# -------------------------------------------------------------------------------------------- timing


def time_interleaved(
    renderers: Dict[str, Renderer], view: str, warmup: int, repeats: int
) -> Tuple[Dict[str, List[float]], Dict[str, np.ndarray]]:
    """Per-call seconds of each renderer for ``view``: warm-up, then ``repeats`` rounds in rotated order."""
    names = list(renderers)
    images = {}
    for _ in range(warmup):
        for name in names:
            images[name] = renderers[name](view).numpy().copy()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            renderers[name](view)
            times[name].append(time.perf_counter() - start)
    return times, images


# -------------------------------------------------------------------------------------------- memory


def _proc_status_kb(field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(method: str, volume_file: Path, size: int, view: str, geometry: DRRGeometry) -> Dict[str, float]:
    """In this (fresh) process: build ``method`` on the saved volume, render once, return RSS figures in MB."""
    saved = np.load(volume_file)
    grid = CanonicalGrid(size=int(saved["grid_size"]), center_lps=tuple(saved["center_lps"]))
    render = make_renderer(method, saved["mu"], grid, size, geometry)
    gc.collect()
    before = _proc_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    render(view)
    peak = _proc_status_kb("VmHWM")
    return {"render_peak_increase_mb": round((peak - before) / 1024, 1), "process_peak_rss_mb": round(peak / 1024, 1)}


def measure_memory(
    method: str, volume_file: Path, size: int, view: str, geometry: DRRGeometry, threads: int
) -> Dict[str, float]:
    """Run :func:`memory_child` in a fresh interpreter (so earlier allocations do not hide the peak)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        method,
        str(volume_file),
        str(size),
        view,
        "--threads",
        str(threads),
        "--sad",
        repr(geometry.sad_mm),
        "--sid",
        repr(geometry.sid_mm),
        "--detector-mm",
        repr(geometry.detector_mm),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- reports


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_info() -> Dict[str, Any]:
    """CPU, memory and software versions of this run."""
    cpu = cpu_model()
    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    from importlib.metadata import version

    versions = {pkg: version(pkg) for pkg in ("diffdrr", "torch", "torchio", "numpy", "SimpleITK")}
    versions["x2ct"] = x2ct.__version__
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "ram_gb": ram_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def git_revision() -> Optional[str]:
    """HEAD commit of the repository (plus '-dirty' when the work tree has changes), or None."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.round((image - low) / max(high - low, 1e-12) * 255.0), 0, 255).astype(np.uint8)


def save_comparison_png(rows: Sequence[Tuple[str, np.ndarray, np.ndarray]], other_name: str, path: Path) -> None:
    """PNG with one row per (label, ours, other): ours | other (same grey scale) | other - ours (red +, blue -)."""
    from PIL import Image, ImageDraw

    size = rows[0][1].shape[0]
    pad, header = 8, 18
    canvas = Image.new("RGB", (3 * size + 4 * pad, len(rows) * (size + header + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, ours, other) in enumerate(rows):
        low, high = float(ours.min()), float(ours.max())
        diff = other - ours
        limit = max(float(np.abs(diff).max()), 1e-12)
        red = np.clip(diff / limit, 0, 1)
        blue = np.clip(-diff / limit, 0, 1)
        diff_rgb = np.stack([1 - blue, 1 - red - blue, 1 - red], axis=-1).clip(0, 1)
        panels = [
            Image.fromarray(_to_uint8(ours, low, high)).convert("RGB"),
            Image.fromarray(_to_uint8(other, low, high)).convert("RGB"),
            Image.fromarray(np.round(diff_rgb * 255).astype(np.uint8)),
        ]
        titles = [
            f"x2ct {label}",
            f"{other_name} {label}",
            f"other - x2ct: ±{limit:.2g} of {high - low:.2g}",
        ]
        top = pad + r * (size + header + pad)
        for c, (panel, title) in enumerate(zip(panels, titles)):
            left = pad + c * (size + pad)
            draw.text((left, top + 2), title, fill="black")
            canvas.paste(panel, (left, top + header))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def markdown_table(results: Dict[str, Any]) -> str:
    """The results table (markdown) with the command that produced it."""
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs, "
        f"torch {results['machine']['versions']['torch']} with {results['settings']['threads']} threads, "
        f"diffdrr {results['machine']['versions']['diffdrr']}; run {results['timestamp_utc']}, "
        f"{results['settings']['warmup']} warm-up + {results['settings']['repeats']} interleaved repeats "
        "(median); load average (1 min) at start / end "
        f"{results['load_average_1_5_15min']['start'][0]} / {results['load_average_1_5_15min']['end'][0]}.  ",
        "Orientation check on the asymmetric phantom: "
        + ("passed." if results["orientation_check"]["passed"] else "FAILED."),
        "",
        "| DRR | view | volume | x2ct s | DiffDRR trilinear s (×) | DiffDRR Siddon s (×) "
        "| NCC trilinear | NCC Siddon | mean ratio tri / Sid | render peak +MB x2ct / tri / Sid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["configs"]:
        t, m, a = row["seconds"], row["memory"], row["agreement"]
        mem = " / ".join(f"{m[k]['render_peak_increase_mb']:.0f}" if k in m else "–" for k in (OURS, TRILINEAR, SIDDON))
        lines.append(
            f"| {row['size']}² | {row['view']} | {row['volume_grid']}³ @ {row['voxel_mm']} mm "
            f"| {t[OURS]:.3f} | {t[TRILINEAR]:.3f} ({row['speedup'][TRILINEAR]:.1f}×) "
            f"| {t[SIDDON]:.3f} ({row['speedup'][SIDDON]:.1f}×) "
            f"| {a[TRILINEAR]['ncc']:.4f} | {a[SIDDON]['ncc']:.4f} "
            f"| {a[TRILINEAR]['mean_ratio']:.3f} / {a[SIDDON]['mean_ratio']:.3f} | {mem} |"
        )
    target = results["target"]
    lines += [
        "",
        f"Target (x2ct ≥ {target['min_speedup_vs_trilinear']}× faster than DiffDRR trilinear at NCC ≥ "
        f"{target['min_ncc']} in every configuration): **{'met' if target['met'] else 'NOT met'}** "
        f"(smallest speed-up {target['smallest_speedup_vs_trilinear']:.1f}×, smallest NCC "
        f"{target['smallest_ncc_vs_trilinear']:.4f}).",
    ]
    return "\n".join(lines)


def write_doc_table(
    doc: Path,
    table: str,
    markers: Tuple[str, str] = (DOC_START, DOC_END),
    title: str = "DRR benchmark: x2ct vs DiffDRR",
) -> None:
    """Replace the text between the bench ``markers`` of ``doc`` (append a section when they are absent; a new
    ``doc`` starts with ``# title``)."""
    start, end = markers
    block = f"{start}\n{table}\n{end}"
    text = doc.read_text() if doc.exists() else f"# {title}\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


# ---------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """The whole benchmark; returns the JSON-ready results."""
    geometry = DRRGeometry(sad_mm=args.sad, sid_mm=args.sid, detector_mm=args.detector_mm)
    results: Dict[str, Any] = {
        "benchmark": "x2ct.drr.project vs DiffDRR 0.6.1 (trilinear, Siddon), matched geometry, same volume",
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "install_commands": INSTALL_COMMANDS,
        "git_revision": git_revision(),
        "machine": machine_info(),
        "settings": {
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "sizes": args.sizes,
            "views": list(VIEWS),
            "geometry_mm": {"sad": geometry.sad_mm, "sid": geometry.sid_mm, "detector": geometry.detector_mm},
            "ct": str(sample_ct_path().relative_to(REPO)) if args.ct is None else str(args.ct),
            "volume": "x2ct.geometry.to_canonical(ct, canonical_grid_size(size)) -> hu_to_mu, float32",
            "diffdrr_pose": {
                "read_orientation": "AP",
                "reverse_x_axis": False,
                "translation_mm": [0.0, geometry.sad_mm, 0.0],
                "euler_zxy_rad": {view: list(DIFFDRR_ROTATION[view]) for view in VIEWS},
                "trilinear_n_points": 500,
                "siddon_mode": "nearest (DiffDRR default)",
                "image_flip": "none",
            },
            "timed_call": "one DRR (batch 1, one channel) on the prepared volume, torch.no_grad()",
            "memory": "fresh child process per method/config; VmHWM after one cold render minus VmRSS before "
            "(peak reset through /proc/self/clear_refs); process_peak_rss_mb = VmHWM",
        },
    }
    results["load_average_1_5_15min"] = {"start": [round(v, 2) for v in os.getloadavg()]}
    print("orientation check (phantom) ...", flush=True)
    results["orientation_check"] = orientation_check(geometry)
    print(json.dumps(results["orientation_check"]), flush=True)

    configs: List[Dict[str, Any]] = []
    png_rows: List[Tuple[str, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="x2ct-bench-") as tmp:
        for size in args.sizes:
            mu, grid = canonical_mu(size, args.ct)
            volume_file = Path(tmp) / f"mu_{grid.size}.npz"
            np.savez(volume_file, mu=mu, grid_size=grid.size, center_lps=np.asarray(grid.center_lps))
            renderers = {method: make_renderer(method, mu, grid, size, geometry) for method in METHODS}
            for view in VIEWS:
                print(f"timing {size}² {view} ...", flush=True)
                times, images = time_interleaved(renderers, view, args.warmup, args.repeats)
                medians = {name: statistics.median(values) for name, values in times.items()}
                row: Dict[str, Any] = {
                    "size": size,
                    "view": view,
                    "volume_grid": grid.size,
                    "voxel_mm": grid.spacing_mm,
                    "seconds": {name: round(value, 5) for name, value in medians.items()},
                    "seconds_all": {name: [round(v, 5) for v in values] for name, values in times.items()},
                    "speedup": {name: round(medians[name] / medians[OURS], 3) for name in (TRILINEAR, SIDDON)},
                    "agreement": {name: agreement(images[OURS], images[name]) for name in (TRILINEAR, SIDDON)},
                    "agreement_trilinear_vs_siddon_ncc": round(ncc(images[TRILINEAR], images[SIDDON]), 6),
                    "flip_ncc_trilinear": flip_nccs(images[OURS], images[TRILINEAR]),
                    "line_integral_range": {
                        name: [round(float(img.min()), 4), round(float(img.max()), 4)] for name, img in images.items()
                    },
                }
                print(json.dumps({k: row[k] for k in ("size", "view", "seconds", "speedup", "agreement")}), flush=True)
                configs.append(row)
                if size == max(args.sizes):
                    png_rows.append((f"{view} {size}px", images[OURS], images[TRILINEAR]))
            del renderers
            gc.collect()
            if not args.no_memory:
                for row in (r for r in configs if r["size"] == size):
                    row["memory"] = {}
                    for method in METHODS:
                        print(f"memory {size}² {row['view']} {method} ...", flush=True)
                        row["memory"][method] = measure_memory(
                            method, volume_file, size, row["view"], geometry, args.threads
                        )
                    print(json.dumps(row["memory"]), flush=True)
            else:
                for row in (r for r in configs if r["size"] == size):
                    row["memory"] = {}
    results["configs"] = configs
    results["load_average_1_5_15min"]["end"] = [round(v, 2) for v in os.getloadavg()]
    speedups = [row["speedup"][TRILINEAR] for row in configs]
    nccs = [row["agreement"][TRILINEAR]["ncc"] for row in configs]
    results["target"] = {
        "min_speedup_vs_trilinear": 5.0,
        "min_ncc": 0.99,
        "smallest_speedup_vs_trilinear": min(speedups),
        "smallest_ncc_vs_trilinear": min(nccs),
        "met": bool(min(speedups) >= 5.0 and min(nccs) >= 0.99),
    }
    if png_rows and args.png:
        save_comparison_png(png_rows, "DiffDRR trilinear", args.png)
        results["png"] = os.path.relpath(args.png, REPO)
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="detector pixels per edge")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method and configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method and configuration first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--sad", type=float, default=541.0, help="source to isocentre, mm")
    parser.add_argument("--sid", type=float, default=949.0, help="source to detector, mm")
    parser.add_argument("--detector-mm", type=float, default=500.0, help="detector edge, mm")
    parser.add_argument("--ct", type=Path, default=None, help="CT in HU (default: the bundled sample CT)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results JSON")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file that receives the table")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help="side-by-side PNG (largest size)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory measurements")
    parser.add_argument("--memory-child", nargs=4, metavar=("METHOD", "VOLUME", "SIZE", "VIEW"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run the benchmark (or one memory child) and write JSON, table and PNG."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        method, volume, size, view = args.memory_child
        geometry = DRRGeometry(sad_mm=args.sad, sid_mm=args.sid, detector_mm=args.detector_mm)
        print(json.dumps(memory_child(method, Path(volume), int(size), view, geometry)))
        return 0
    results = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    if args.doc:
        write_doc_table(args.doc, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
