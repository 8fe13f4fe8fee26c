"""``x2ct demo``: the README's main command, run on the bundled sample data.

At this stage of the project it inspects the bundled real chest CT, places it on the canonical
320 mm grid, writes it in the exchange formats and draws a three-plane picture with orientation
letters. It grows into radiographs -> synthetic CT -> findings as the models land.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import write_text_atomic
from .geometry import canonical_array, grid_of, labels_to_canonical, to_canonical
from .io import ct_info, read_ct, write_volume
from .preview import save_picture, three_plane_picture
from .resources import sample_ct_path, sample_labels_path

HEART_LABEL = 51
"""Label value of the heart in the bundled TotalSegmentator-style label map (structures.csv)."""


def run_demo(out: Path, size: int = 128) -> dict:
    """Run the demo into ``out`` and return its summary (also written as ``summary.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] reading the sample chest CT {sample_ct_path().name}")
    ct = read_ct(sample_ct_path())
    print(f"[2/4] placing it on the canonical {size}^3 grid (320 mm cube)")
    canonical = to_canonical(ct, size=size)
    labels = labels_to_canonical(sitk.ReadImage(str(sample_labels_path())), canonical)
    print("[3/4] writing canonical_ct.nrrd, canonical_ct.nii.gz, canonical_labels.nrrd")
    write_volume(canonical, out / "canonical_ct.nrrd")
    write_volume(canonical, out / "canonical_ct.nii.gz")
    write_volume(labels, out / "canonical_labels.nrrd")
    print("[4/4] drawing preview.png")
    volume = canonical_array(canonical)
    picture = three_plane_picture(volume, title="Sample chest CT on the canonical grid (real CT)")
    save_picture(picture, out / "preview.png")
    heart = np.argwhere(sitk.GetArrayViewFromImage(labels) == HEART_LABEL).mean(axis=0)
    heart_lps = canonical.TransformContinuousIndexToPhysicalPoint([float(v) for v in heart[::-1]])
    summary = {
        "input": {"path": str(sample_ct_path()), **ct_info(ct)},
        "canonical": {**ct_info(canonical), "grid_center_lps_mm": list(grid_of(canonical).center_lps)},
        "heart_centroid_lps_mm": [round(v, 1) for v in heart_lps],
        "outputs": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) + ["summary.json"],
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    print(f"done: {out}/ (heart centroid at LPS x = {heart_lps[0]:+.1f} mm, i.e. patient left is +x)")
    return summary
