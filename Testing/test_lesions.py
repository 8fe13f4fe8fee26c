"""Augmentation, procedural lesions and synthetic cases on the real CT at 64³ (x2ct.data.augment/lesions/synthetic)."""

from __future__ import annotations

import time
from typing import Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from x2ct.data import lesions
from x2ct.data.augment import AugmentConfig, adjust_intensity, augment_case, deform, sampling_coordinates
from x2ct.data.synthetic import KIND_LABELS, LESION_KINDS, TARGET_NAMES, synthetic_case, targets_for
from x2ct.geometry import CanonicalGrid, labels_to_canonical, to_canonical
from x2ct.intensity import AIR_HU

SIZE = 64
SPACING = CanonicalGrid(size=SIZE).spacing_mm

Case = Tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def case64(sample_ct_path, sample_labels_path) -> Case:
    """(CT HU float32 clipped at air, labels uint8) of the sample CT on the 64³ canonical grid."""
    ct = to_canonical(sitk.ReadImage(str(sample_ct_path)), size=SIZE)
    labels = labels_to_canonical(sitk.ReadImage(str(sample_labels_path)), ct)
    return np.maximum(sitk.GetArrayFromImage(ct), AIR_HU).astype(np.float32), sitk.GetArrayFromImage(labels)


@pytest.fixture(scope="module")
def inserted(case64) -> dict:
    """kind -> (CT with that lesion, mask), each from its own seeded generator."""
    ct, labels = case64
    return {
        kind: fn(ct, labels, np.random.default_rng([11, n]), SPACING)
        for n, (kind, fn) in enumerate(lesions.INSERTERS.items())
    }


def test_every_kind_has_an_inserter_and_labels():
    assert set(LESION_KINDS) == set(lesions.INSERTERS) == set(KIND_LABELS)
    assert len(LESION_KINDS) == 8


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_mask_nonempty_on_grid_and_ct_changed(kind, case64, inserted):
    ct, _ = case64
    new, mask = inserted[kind]
    assert mask.dtype == bool and mask.shape == ct.shape
    assert new.dtype == np.float32 and new.shape == ct.shape
    assert mask.any()
    assert np.any(new[mask] != ct[mask])
    if kind != "pulmonary_embolism":  # PE also enhances the whole vessel tree
        outside = ~ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3)), iterations=2)
        assert np.array_equal(new[outside], ct[outside])


@pytest.mark.parametrize(
    "kind", ["solid_nodule", "calcified_granuloma", "calcification_flecks", "cavity", "consolidation", "miliary"]
)
def test_parenchymal_lesions_lie_in_the_lobes(kind, case64, inserted):
    _, labels = case64
    _, mask = inserted[kind]
    assert np.all(lesions.lung_mask(labels)[mask])


def test_lesion_densities(case64, inserted):
    ct, labels = case64
    nodule_ct, nodule = inserted["solid_nodule"]
    assert lesions.SOFT_TISSUE_HU[0] <= nodule_ct[nodule].mean() <= lesions.SOFT_TISSUE_HU[1]
    for kind in ("calcified_granuloma", "calcification_flecks"):
        calc_ct, calc = inserted[kind]
        assert calc_ct[calc].mean() > 300.0, kind
    cav_ct, cav = inserted["cavity"]
    core = cav_ct[cav] < -500.0
    assert core.any() and cav_ct[cav][core].mean() < -800.0
    wall = cav_ct[cav] > -300.0
    assert wall.any() and -50.0 < cav_ct[cav][wall].mean() < 100.0
    centre = tuple(np.rint(np.argwhere(cav).mean(0)).astype(int))
    assert cav_ct[centre] < -800.0  # the lumen is enclosed by the wall
    con_ct, con = inserted["consolidation"]
    assert con_ct[con].mean() > ct[con].mean() + 300.0
    mil_ct, mil = inserted["miliary"]
    below = mil & (ct < lesions.MILIARY_NODULE_HU)  # partial volume pulls voxels towards nodule density
    assert np.all(mil_ct[below] >= ct[below]) and mil_ct[mil].mean() > ct[mil].mean()
    lungs = lesions.lung_mask(labels)
    assert mil.sum() > 0.05 * lungs.sum()  # diffuse, throughout both lungs
    w = np.argwhere(mil)[:, 2]
    assert (w < np.argwhere(lungs)[:, 2].mean()).any() and (w > np.argwhere(lungs)[:, 2].mean()).any()


def test_effusion_is_dependent_fluid_at_the_lung_base(case64, inserted):
    _, labels = case64
    eff_ct, eff = inserted["pleural_effusion"]
    assert np.all(lesions.EFFUSION_HU[0] - 1 <= eff_ct[eff]) and np.all(eff_ct[eff] <= lesions.EFFUSION_HU[1] + 1)
    lungs = lesions.lung_mask(labels)
    assert np.all(ndimage.binary_dilation(lungs)[eff])  # in the pleural space of the lung base
    for lobes in (lesions.RIGHT_LUNG_LABELS, lesions.LEFT_LUNG_LABELS):
        side = np.isin(labels, lobes)
        if not (eff & side).any():
            continue
        fluid, lung = np.argwhere(eff & side).mean(0), np.argwhere(side).mean(0)
        assert fluid[0] > lung[0] + 2  # inferior (larger D)
        assert fluid[1] > lung[1] + 2  # posterior (larger H)


def test_pulmonary_embolism_is_a_defect_in_an_enhanced_vessel(case64, inserted):
    ct, labels = case64
    pe_ct, pe = inserted["pulmonary_embolism"]
    assert pe_ct[pe].max() <= lesions.CLOT_HU[1] + 1e-3  # clot, never contrast
    assert np.median(pe_ct[pe]) > -400.0  # mostly vessel, not lung
    ring = ndimage.binary_dilation(pe, iterations=2) & ~pe
    assert (pe_ct[ring] > 150.0).any()  # contrast-filled vessel continues next to the defect
    enhanced, vessels = lesions.enhance_pulmonary_vessels(ct, labels, np.random.default_rng(0), SPACING)
    assert np.all(vessels[pe])
    assert np.all(enhanced >= ct) and np.array_equal(enhanced[~vessels], ct[~vessels])
    assert not np.isin(labels[vessels], [51, 52]).any()  # not heart or aorta


def test_free_mask_keeps_lesions_apart(case64):
    ct, labels = case64
    free = lesions.lung_mask(labels)
    free[:, :, : SIZE // 2] = False  # only the patient's left half
    for kind in ("solid_nodule", "cavity", "consolidation", "miliary", "calcification_flecks"):
        _, mask = lesions.INSERTERS[kind](ct, labels, np.random.default_rng(5), SPACING, free=free)
        assert mask.any() and np.all(free[mask]), kind


def test_no_lungs_is_a_clear_error(case64):
    ct, labels = case64
    with pytest.raises(lesions.LesionError, match="lung"):
        lesions.solid_nodule(ct, np.zeros_like(labels), np.random.default_rng(0), SPACING)


def test_label_mapping_matches_the_table():
    none = targets_for([])
    assert none == {name: 0 for name in TARGET_NAMES if name != "tb_active"} | {"tb_active": None}
    expected = {  # tb, granuloma, cavitation, calcification, active, pe
        "solid_nodule": (0, 0, 0, 0, None, 0),
        "calcified_granuloma": (1, 1, 0, 1, 0, 0),
        "calcification_flecks": (1, 0, 0, 1, 0, 0),
        "cavity": (1, 0, 1, 0, 1, 0),
        "consolidation": (1, 0, 0, 0, 1, 0),
        "pleural_effusion": (1, 0, 0, 0, 1, 0),
        "miliary": (1, 0, 0, 0, 1, 0),
        "pulmonary_embolism": (0, 0, 0, 0, None, 1),
    }
    for kind, values in expected.items():
        assert tuple(targets_for([kind])[name] for name in TARGET_NAMES) == values, kind
    mixed = targets_for(["calcified_granuloma", "cavity", "pulmonary_embolism"])
    assert mixed == {
        "tb_present": 1,
        "tb_granuloma": 1,
        "tb_cavitation": 1,
        "tb_calcification": 1,
        "tb_active": 1,
        "pe_present": 1,
    }
    assert targets_for(["calcification_flecks", "solid_nodule"])["tb_active"] == 0
    with pytest.raises(ValueError, match="unknown"):
        targets_for(["tumour"])


def test_augmentation_keeps_alignment_shapes_and_air(case64):
    ct, labels = case64
    lungs_before = ct[lesions.lung_mask(labels)].mean()
    for seed in range(3):
        new_ct, new_labels = augment_case(ct, labels, np.random.default_rng(seed), SPACING)
        assert new_ct.shape == ct.shape and new_ct.dtype == np.float32
        assert new_labels.shape == labels.shape and new_labels.dtype == labels.dtype
        assert set(np.unique(new_labels)) <= set(np.unique(labels))
        lungs = lesions.lung_mask(new_labels)
        assert abs(lungs.sum() / lesions.lung_mask(labels).sum() - 1.0) < 0.25
        assert new_ct[lungs].mean() < -500.0 and abs(new_ct[lungs].mean() - lungs_before) < 60.0
        assert new_ct[new_labels == 51].mean() > 0.0  # heart stays soft tissue / blood
        assert new_ct.min() >= AIR_HU
        assert np.all(new_ct[0, :4, :4] == AIR_HU)  # corner outside the body stays exactly air
        assert not np.array_equal(new_ct, ct)


def test_zero_strength_augmentation_is_identity(case64):
    ct, labels = case64
    off = AugmentConfig(0.0, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0)
    new_ct, new_labels = deform(ct, labels, np.random.default_rng(1), SPACING, off)
    assert np.allclose(new_ct, ct, atol=1e-3) and np.array_equal(new_labels, labels)
    assert np.allclose(adjust_intensity(ct, np.random.default_rng(1), off), ct, atol=1e-3)


def test_elastic_displacement_is_bounded(case64):
    ct, labels = case64
    config = AugmentConfig(rotation_deg=0.0, scale=0.0, translation_mm=0.0, elastic_mm=4.0)
    coords = sampling_coordinates(ct.shape, SPACING, np.random.default_rng(2), config)
    shift_mm = (coords - np.indices(ct.shape)) * SPACING
    assert np.abs(shift_mm).max() <= 4.0 + 1e-3 and np.abs(shift_mm).max() > 0.5


def test_synthetic_case_is_deterministic_and_varies(case64):
    ct, labels = case64
    start = time.perf_counter()
    a = synthetic_case(ct, labels, SPACING, seed=7, index=3)
    elapsed = time.perf_counter() - start
    b = synthetic_case(ct, labels, SPACING, seed=7, index=3)
    c = synthetic_case(ct, labels, SPACING, seed=7, index=4)
    assert elapsed < 2.0
    assert np.array_equal(a.ct_hu, b.ct_hu) and np.array_equal(a.labels, b.labels)
    assert a.kinds == b.kinds and a.targets == b.targets and a.contrast == b.contrast
    assert a.lesion_masks.keys() == b.lesion_masks.keys()
    assert all(np.array_equal(a.lesion_masks[k], b.lesion_masks[k]) for k in a.kinds)
    assert not np.array_equal(a.ct_hu, c.ct_hu)
    assert not np.array_equal(a.ct_hu, synthetic_case(ct, labels, SPACING, seed=8, index=3).ct_hu)


def test_synthetic_cases_carry_consistent_masks_and_targets(case64):
    ct, labels = case64
    seen, tb, pe, normal = set(), 0, 0, 0
    for index in range(24):
        case = synthetic_case(ct, labels, SPACING, seed=1, index=index)
        assert case.ct_hu.shape == ct.shape and case.ct_hu.dtype == np.float32
        assert case.labels.shape == labels.shape and case.labels.dtype == labels.dtype
        assert list(case.lesion_masks) == case.kinds and case.targets == targets_for(case.kinds)
        assert set(case.targets) == set(TARGET_NAMES)
        for kind, mask in case.lesion_masks.items():
            assert mask.dtype == bool and mask.shape == ct.shape and mask.any(), kind
        if "pulmonary_embolism" in case.kinds:
            assert case.contrast
        seen.update(case.kinds)
        tb += case.targets["tb_present"]
        pe += case.targets["pe_present"]
        normal += not case.kinds
    assert normal >= 1 and 4 <= tb <= 20 and 1 <= pe <= 12
    assert len(seen) >= 6


def test_synthetic_case_with_given_kinds(case64):
    ct, labels = case64
    case = synthetic_case(ct, labels, SPACING, seed=2, index=0, kinds=["cavity", "pulmonary_embolism"])
    assert case.kinds == ["cavity", "pulmonary_embolism"]
    assert case.targets["tb_cavitation"] == 1 and case.targets["pe_present"] == 1
    assert not (case.lesion_masks["cavity"] & case.lesion_masks["pulmonary_embolism"]).any()
