"""Render the demo's sample radiographs: PA and lateral DRRs of the bundled real chest CT.

    python Resources/SampleData/make_sample_radiographs.py

Writes radiographs/pa.png, radiographs/lateral.png (16-bit grey, per-image min-max of the line
integral, bone bright, PA in radiological display) and radiographs/pa.nrrd, radiographs/lateral.nrrd
(float32, with the DRR geometry and isocentre pixel pitch in the header) beside this file.

The CT is the un-augmented chest_ct.nii.gz with the table removed and everything outside the body
set to air (x2ct.data.body.masked_canonical_ct, the data-set builder's recipe), on the canonical
128^3 grid; the DRRs are rendered by ``x2ct drr`` with the official X2CT-GAN geometry (SAD 541 mm,
SID 949 mm, 500 mm detector, so 285 mm at the isocentre) at 256 x 256 pixels. They are synthetic
radiographs of a real CT, not acquired radiographs, and are held out from the demo models' training
(which sees only augmented copies of the CT).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from x2ct.cli import main as x2ct_main
from x2ct.data.body import masked_canonical_ct
from x2ct.io import read_ct, write_volume
from x2ct.resources import sample_ct_path

HERE = Path(__file__).resolve().parent
DRR_SIZE = 256
GRID_SIZE = 128


def main() -> int:
    ct = masked_canonical_ct(read_ct(sample_ct_path()), size=GRID_SIZE, source=sample_ct_path())
    with tempfile.TemporaryDirectory() as tmp:
        volume = write_volume(ct, Path(tmp) / "chest_ct_body.nrrd")
        return x2ct_main(["drr", str(volume), "-o", str(HERE / "radiographs"), "--size", str(DRR_SIZE)])


if __name__ == "__main__":
    sys.exit(main())
