"""Classifier networks (x2ct.models.classifiers): registry, options, shapes, which inputs each network reads.

Tiny widths throughout (radiographs 16², CT 32³); the published sizes are only built, never run.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import torch
from torch import Tensor

from x2ct.models import CLASSIFIER_ARCHS, build_classifier, classifier_config
from x2ct.models.classifiers import central_coronal_slab

pytestmark = pytest.mark.usefixtures("one_thread")

S = 16
CT = (32, 32, 32)
DENSE_TINY: Dict[str, Any] = dict(init_features=8, growth_rate=4, block_config=(2, 2))
TINY: Dict[str, Dict[str, Any]] = {
    "densenet2d": DENSE_TINY,
    "hemis-densenet2d": DENSE_TINY,
    "cnn3d": dict(width=0.125),
    "cnn3d-2slice": dict(width=0.125),
    "densenet3d": DENSE_TINY,
    "concat-cnn3d": dict(width=0.125),
    "concat-cnn3d-2slice": dict(width=0.125),
    "late-fusion": dict(width=0.125, **DENSE_TINY),
}
K = 3



def tiny(arch: str, seed: int = 0, **extra: Any):
    torch.manual_seed(seed)
    return build_classifier(arch, K, **{**TINY[arch], **extra})


def make_batch(n: int, seed: int = 1) -> Dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pa": torch.rand(n, 1, S, S, generator=gen),
        "lateral": torch.rand(n, 1, S, S, generator=gen),
        "ct": torch.rand(n, 1, *CT, generator=gen),
    }


def test_registry_names_the_contract_archs():
    # latent-densenet3d needs a latent diffusion model's VAE on disk: Testing/test_latent_classifier.py runs it
    assert set(CLASSIFIER_ARCHS) == set(TINY) | {"latent-densenet3d"}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_arch_runs_eval_batch_1_and_train_batch_2(arch):
    net = tiny(arch)
    assert net.arch == arch
    assert set(net.cam_layers) <= set(net.inputs)
    modules = list(net.modules())
    assert all(any(layer is m for m in modules) for layer in net.cam_layers.values())
    net.eval()
    with torch.no_grad():
        out1 = net(make_batch(1))
    net.train()
    out2 = net(make_batch(2))
    assert out1.shape == (1, K) and out2.shape == (2, K)
    assert torch.isfinite(out1).all() and torch.isfinite(out2).all()
    out2.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_seeded_init_is_deterministic(arch):
    a, b, c = tiny(arch, seed=0).state_dict(), tiny(arch, seed=0).state_dict(), tiny(arch, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("arch", sorted(TINY))
def test_config_round_trips_through_json(arch):
    net = tiny(arch)
    config = json.loads(json.dumps(classifier_config(net)))
    assert config["arch"] == arch and config["num_outputs"] == K
    rebuilt = build_classifier(**config)
    assert classifier_config(rebuilt) == config
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(net.state_dict())  # strict


def test_default_sizes_are_the_published_ones():
    cnn = build_classifier("cnn3d", 1)
    convs = [m for m in cnn.trunk.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 256]
    assert cnn.head.fc.out_features == 512 and cnn.head.dropout.p == pytest.approx(0.3)
    dense = build_classifier("densenet2d", 2)
    assert classifier_config(dense)["block_config"] == [6, 12, 24, 16]
    assert dense.encoder.out_channels == 1024  # DenseNet-121's final feature count
    assert dense.head.out.out_features == 2


def test_unknown_arch_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="valid: .*densenet2d.*late-fusion"):
        build_classifier("resnet", 1)
    with pytest.raises(ValueError, match="unknown option 'depth'; valid options: width, dropout"):
        build_classifier("cnn3d", 1, depth=3)
    with pytest.raises(ValueError, match="unknown option 'width'.*block_config"):
        build_classifier("densenet2d", 1, width=0.5)
    bad = [
        ("cnn3d", {"width": 0}),
        ("cnn3d", {"width": "wide"}),
        ("cnn3d", {"dropout": 1.0}),
        ("densenet2d", {"block_config": []}),
        ("densenet2d", {"block_config": [2, 0]}),
        ("densenet2d", {"growth_rate": 2.5}),
        ("densenet2d", {"init_features": True}),
        ("hemis-densenet2d", {"view_dropout": 1.5}),
    ]
    for arch, options in bad:
        name = next(iter(options))
        with pytest.raises(ValueError, match=f"{arch}: option {name} must"):
            build_classifier(arch, 1, **options)
    with pytest.raises(ValueError, match="num_outputs"):
        build_classifier("cnn3d", 0)


def test_missing_input_and_too_small_input_are_clear_errors():
    net = tiny("concat-cnn3d").eval()
    with pytest.raises(ValueError, match="needs the batch key 'pa'"):
        net({"ct": torch.rand(1, 1, *CT)})
    dense = build_classifier("densenet2d", 1, init_features=4, growth_rate=4).eval()  # four blocks
    with pytest.raises(ValueError, match="at least 29 pixels"):
        dense({"pa": torch.rand(1, 1, 16, 16)})


def test_central_coronal_slab_is_the_pa_frame():
    ct = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(1, 2, 5, 6, 7)
    slab = central_coronal_slab(ct)
    assert slab.shape == (1, 2, 2, 5, 7)  # (N, C, slice, D, W)
    assert torch.equal(slab[:, :, 0], ct[:, :, :, 2, :]) and torch.equal(slab[:, :, 1], ct[:, :, :, 3, :])


@pytest.mark.parametrize("arch", ["cnn3d-2slice", "concat-cnn3d-2slice"])
def test_two_slice_models_read_only_the_central_coronal_slices(arch):
    net = tiny(arch).eval()
    batch = make_batch(1)
    h = CT[1]
    with torch.no_grad():
        ref = net(batch)
        other = batch["ct"].clone()
        keep = [h // 2 - 1, h // 2]
        rest = [i for i in range(h) if i not in keep]
        other[:, :, :, rest, :] = torch.rand(1, 1, CT[0], len(rest), CT[2])
        assert torch.equal(net({**batch, "ct": other}), ref)
        for index in keep:
            changed = batch["ct"].clone()
            changed[:, :, :, index, :] += 0.5
            assert not torch.allclose(net({**batch, "ct": changed}), ref)


@pytest.mark.parametrize("arch", ["concat-cnn3d", "concat-cnn3d-2slice", "late-fusion"])
def test_fusion_models_use_both_inputs(arch):
    net = tiny(arch).eval()
    batch = make_batch(1)
    with torch.no_grad():
        ref = net(batch)
        assert not torch.allclose(net({**batch, "pa": batch["pa"] * 0.5}), ref)
        assert not torch.allclose(net({**batch, "ct": batch["ct"] * 0.5}), ref)
        assert torch.equal(net({**batch, "lateral": torch.zeros(1, 1, S, S)}), ref)  # not an input of these


def test_hemis_runs_with_and_without_the_lateral():
    batch = make_batch(2)
    pa_only = {"pa": batch["pa"]}
    for view_dropout in (0.0, 1.0):
        net = tiny("hemis-densenet2d", view_dropout=view_dropout)
        net.eval()
        with torch.no_grad():
            both, single = net(batch), net(pa_only)
            # the lateral counts at inference whatever view_dropout says
            assert not torch.allclose(both, single)
            assert net({**batch, "lateral": None}).shape == (2, K)
            assert net({"pa": batch["pa"][:1]}).shape == (1, K)
        net.train()
        train_both, train_single = net(batch), net(pa_only)
        assert train_both.shape == train_single.shape == (2, K)
        if view_dropout == 1.0:  # every lateral dropped: exactly the single-view input (PA features, variance 0)
            assert torch.allclose(train_both, train_single, atol=1e-6)
        else:
            assert not torch.allclose(train_both, train_single)


def test_hemis_fusion_is_mean_and_population_variance():
    net = tiny("hemis-densenet2d")
    pa = torch.tensor([[1.0, 2.0]])
    lateral = torch.tensor([[3.0, 2.0]])
    assert torch.equal(net.fuse(pa, lateral, None), torch.tensor([[2.0, 2.0, 1.0, 0.0]]))
    assert torch.equal(net.fuse(pa, lateral, torch.tensor([0.0])), torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    assert torch.equal(net.fuse(pa, None, None), torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
