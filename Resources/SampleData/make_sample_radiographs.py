"""Render the demo's two sample cases: PA and lateral DRRs of the bundled real chest CT, as it is and with TB.

    python Resources/SampleData/make_sample_radiographs.py

``radiographs/`` (the healthy case): the un-augmented chest_ct.nii.gz with the table removed and
everything outside the body set to air (x2ct.data.body.masked_canonical_ct, the data-set builder's
recipe), on the canonical 128^3 grid.

``radiographs_tb/`` (the TB case): the same CT with procedural active-TB lesions (a cavity and a
consolidation, x2ct.data.synthetic with every augmentation switched off, seed :data:`TB_SEED`, so the
lesions are the only difference), plus ``lesions.nrrd`` (the lesion masks on the canonical grid, one
label per kind) and ``lesions.json`` (kinds, labels, centroids in LPS mm, sizes).

Each folder gets pa.png, lateral.png (16-bit grey, per-image min-max of the line integral, bone bright,
PA in radiological display) and pa.nrrd, lateral.nrrd (float32, with the DRR geometry and isocentre
pixel pitch in the header), rendered by ``x2ct drr`` with the official X2CT-GAN geometry (SAD 541 mm,
SID 949 mm, 500 mm detector, so 285 mm at the isocentre) at 256 x 256 pixels. They are synthetic
radiographs of a real CT, not acquired radiographs, and neither case was a training case of the demo
models (which see only augmented copies of the CT, with other lesions).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from x2ct.cli import main as x2ct_main
from x2ct.data.augment import AugmentConfig
from x2ct.data.body import masked_canonical_ct
from x2ct.data.synthetic import LESION_KINDS, synthetic_case
from x2ct.geometry import EXTENT_MM, grid_of, labels_to_canonical
from x2ct.io import read_ct, write_volume
from x2ct.resources import sample_ct_path, sample_labels_path

HERE = Path(__file__).resolve().parent
DRR_SIZE = 256
GRID_SIZE = 128
TB_KINDS = ("cavity", "consolidation")
TB_SEED = 2034
"""Synthetic-benchmark seed of the TB case's lesions: no data set of this repository uses it, and with it the
lesions come without contrast-enhanced vessels, so they are the only change to the CT."""
NO_AUGMENTATION = AugmentConfig(0.0, 0.0, 0.0, 0.0, hu_scale=0.0, hu_shift=0.0, noise_hu=0.0)


def render(ct: sitk.Image, folder: Path) -> int:
    """``x2ct drr`` of a canonical HU image into ``folder``."""
    with tempfile.TemporaryDirectory() as tmp:
        volume = write_volume(ct, Path(tmp) / "chest_ct_body.nrrd")
        return x2ct_main(["drr", str(volume), "-o", str(folder), "--size", str(DRR_SIZE)])


def tb_case(ct: sitk.Image) -> int:
    """Paint :data:`TB_KINDS` into the canonical CT, write the lesion masks and their record, render the DRRs."""
    labels = sitk.GetArrayFromImage(labels_to_canonical(sitk.ReadImage(str(sample_labels_path())), ct))
    hu = sitk.GetArrayFromImage(ct)
    case = synthetic_case(hu, labels, EXTENT_MM / GRID_SIZE, TB_SEED, 0, NO_AUGMENTATION, TB_KINDS)
    folder = HERE / "radiographs_tb"
    folder.mkdir(exist_ok=True)
    grid = grid_of(ct)
    mask = np.zeros(hu.shape, np.uint8)
    record = {"source": "Resources/SampleData/make_sample_radiographs.py", "seed": TB_SEED, "lesions": []}
    for kind in case.kinds:
        label = LESION_KINDS.index(kind) + 1
        voxels = case.lesion_masks[kind]
        mask[voxels & (mask == 0)] = label
        d, h, w = np.argwhere(voxels).mean(axis=0)
        centroid = grid.ijk_to_lps() @ np.array([w, h, d, 1.0])
        volume_ml = float(voxels.sum()) * grid.spacing_mm**3 / 1000.0
        record["lesions"].append({
            "kind": kind,
            "label": label,
            "centroid_lps_mm": [round(float(v), 1) for v in centroid[:3]],
            "centroid_dhw": [round(float(v), 2) for v in (d, h, w)],
            "volume_ml": round(volume_ml, 2),
            "equivalent_diameter_mm": round((6.0 * volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0), 1),
        })  # fmt: skip
    record["targets"] = case.targets
    write_volume(grid.image_from_array(mask), folder / "lesions.nrrd")
    (folder / "lesions.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return render(grid.image_from_array(case.ct_hu.astype(np.float32)), folder)


def main() -> int:
    ct = masked_canonical_ct(read_ct(sample_ct_path()), size=GRID_SIZE, source=sample_ct_path())
    return render(ct, HERE / "radiographs") or tb_case(ct)


if __name__ == "__main__":
    sys.exit(main())
