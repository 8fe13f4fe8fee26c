"""Draw docs/images/simulator_effects.png: the bundled sample PA DRR, simulated CR/DX radiographs, and each effect of
the clinical-radiograph simulator (x2ct.data.clinical) alone.

The DRR (Resources/SampleData/radiographs/pa.nrrd, 256 px over the 500 mm detector) is upsampled to 768 px
(0.65 mm pitch). The detector's blur and noise act at a clinical pixel pitch; at the DRR's pitch they mostly
average out, as they do when predict shrinks a clinical radiograph to the model's input size. So the last three
panels show a 47 mm crop of the right lung upsampled to a 0.15 mm pitch: without effects, with quantum noise
alone and with the detector MTF alone (lowest CR MTF50). The figure's grey background shows the collimation
border, which is white or black.

Run: ``python docs/make_simulator_figure.py`` (a few seconds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from x2ct.data.clinical import EFFECTS, sample_params, simulate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DRR = REPO / "Resources" / "SampleData" / "radiographs" / "pa.nrrd"
OUT = REPO / "docs" / "images" / "simulator_effects.png"
SIZE = 768
SEED = 4
CROP = (slice(70, 94), slice(70, 94))
"""24 x 24 px of the 256 px DRR in the right lung (vessels), for the detector panels."""
CLINICAL_PITCH_MM = 0.15
CAPTIONS = {
    "pose": "pose: rotation, shift, field of view",
    "marker": "side marker (lead letter)",
    "heel": "heel effect",
    "scatter": "scatter (no grid)",
    "noise": "quantum noise (1 µGy)",
    "mtf": "detector MTF",
    "usm": "multi-scale unsharp masking",
    "lut": "sigmoid LUT",
    "collimation": "collimation (border)",
}


def main() -> None:
    image = sitk.ReadImage(str(DRR))
    source = sitk.GetArrayFromImage(image).astype(np.float64)
    pitch = float(image.GetSpacing()[0])
    pixel_mm = pitch * source.shape[0] / SIZE
    drr = np.clip(ndimage.zoom(source, SIZE / source.shape[0], order=1, mode="nearest"), 0, 1)
    rng = np.random.default_rng(SEED)
    params = sample_params(rng, modality="CR")
    panels = [("DRR (input)", drr)]
    cr = simulate(drr, params, pixel_mm, np.random.default_rng(SEED)).image
    dx_params = sample_params(np.random.default_rng(SEED + 1), modality="DX", grid=True)
    dx = simulate(drr, dx_params, pixel_mm, np.random.default_rng(SEED + 1)).image
    for name, p, picture in (("CR", params, cr), ("DX", dx_params, dx)):
        panels.append((f"simulated {name} ({'grid' if p.grid else 'no grid'}, {p.dose_ugy:.1f} µGy)", picture))
    for effect in EFFECTS:
        alone = params.with_effects((effect,))
        if effect == "scatter":
            alone = dataclasses.replace(alone, grid=False)
        if effect == "noise":
            alone = dataclasses.replace(alone, dose_ugy=1.0)
        if effect == "marker":
            alone = dataclasses.replace(alone, marker_height_mm=25.0)
        panels.append((CAPTIONS[effect], simulate(drr, alone, pixel_mm, np.random.default_rng(SEED)).image))
    crop = source[CROP]
    crop = np.clip(ndimage.zoom(crop, pitch / CLINICAL_PITCH_MM, order=3, mode="nearest"), 0, 1)
    crop = (crop - crop.min()) / (crop.max() - crop.min())
    detail = dataclasses.replace(params, dose_ugy=2.5, mtf50_lp_mm=1.0)
    for effects, title in (((), "crop at 0.15 mm: no effect"), (("noise",), "crop: quantum noise (2.5 µGy)"),
                           (("mtf",), "crop: detector MTF (MTF50 1 lp/mm)")):  # fmt: skip
        simulated = simulate(crop, detail.with_effects(effects), CLINICAL_PITCH_MM, np.random.default_rng(SEED))
        panels.append((title, simulated.image))
    columns = 5
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.25 * rows), facecolor="0.55")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, picture) in zip(axes.flat, panels):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
        ax.set_title(title, fontsize=9)
    title = "x2ct clinical-radiograph simulator: SIMULATED images of the sample DRR (then each effect alone)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=80)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
