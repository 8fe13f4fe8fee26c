"""CycleGAN style transfer (x2ct.models.cyclegan, x2ct.train.style, x2ct.inference.style) at tiny sizes: the networks'
shapes, the losses on known inputs, the EMA arithmetic, ``x2ct train-style`` with an exact resume, and the style
model format (export -> load_style -> apply_style; broken folders refused in one line)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.inference.style import apply_style, bundled_style_names, load_style
from x2ct.models.cyclegan import (
    ExponentialMovingAverage,
    PatchDiscriminator,
    ResnetGenerator,
    UNetGenerator,
    build_generator,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan_loss,
)
from x2ct.models.metadata import ModelMetadata, read_document
from x2ct.resources import RESOURCES_ENV
from x2ct.train.style import ImagePool, partner

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["size=32", "width=4", "blocks=1", "d_width=4", "d_layers=3", "epochs_constant=1", "epochs_decay=0",
        "batch_size=2", "pool_size=2", "val_fraction=0.34", "device=cpu", "threads=1", "tensorboard=off",
        "progress=false", "seed=3"]  # fmt: skip
"""Two steps: 3 real cases (one held out) = 4 images, 2 DRR cases (one held out) = 2 images; batch 2."""


def _folder(root: Path, cases: int, seed: int, scale: float) -> Path:
    """``cases`` cases of a PA and a lateral 8-bit PNG (32 x 32 noise times ``scale``) listed in manifest.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lines = ["case_id,pa,lateral"]
    for i in range(cases):
        for view in ("pa", "lateral"):
            Image.fromarray((rng.random((32, 32)) * scale * 255).astype(np.uint8)).save(root / f"c{i}_{view}.png")
        lines.append(f"c{i},c{i}_pa.png,c{i}_lateral.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def _train(tmp: Path, run: str, *extra: str) -> int:
    sets = [x for item in (*TINY, *extra) for x in ("--set", item)]
    return main(["train-style", "--real", str(tmp / "real"), "--drr", str(tmp / "drr"), "-o", str(tmp / run), *sets])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """An uninterrupted tiny run ``full`` and the same run stopped after one step and resumed, ``resumed``."""
    tmp = tmp_path_factory.mktemp("style")
    _folder(tmp / "real", 3, seed=0, scale=1.0)
    _folder(tmp / "drr", 2, seed=1, scale=0.5)
    assert _train(tmp, "full") == 0
    assert _train(tmp, "resumed", "max_steps=1") == 0
    assert not (tmp / "resumed" / "model").exists()
    assert _train(tmp, "resumed") == 0
    return tmp


# ------------------------------------------------------------------------------------------ networks


def test_generators_and_discriminator_keep_the_image_shapes():
    x = torch.rand(2, 1, 32, 32)
    for net in (ResnetGenerator(width=4, blocks=2), UNetGenerator(width=4, levels=3)):
        y = net(x).detach()
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert build_generator(net.architecture, net.config()).state_dict().keys() == net.state_dict().keys()
    assert PatchDiscriminator(width=4, layers=3)(x).shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in ResnetGenerator(4, 2).modules()) == 3 + 2 * 2 + 2
    with pytest.raises(ValueError, match="unknown style architecture"):
        build_generator("pix2pix", {})


def test_losses_on_known_inputs():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert float(lsgan_loss(ones, real=True)) == 0.0 and float(lsgan_loss(zeros, real=True)) == 1.0
    assert float(lsgan_loss(zeros, real=False)) == 0.0 and float(lsgan_loss(ones * 3, real=False)) == 9.0
    image = torch.rand(2, 1, 8, 8)
    assert float(cycle_loss(image, image, 10.0)) == 0.0
    assert float(cycle_loss(image + 0.25, image, 10.0)) == pytest.approx(2.5)
    assert float(identity_loss(image - 0.1, image, 5.0)) == pytest.approx(0.5)
    constant = nn.Conv2d(1, 1, 1)
    nn.init.zeros_(constant.weight)
    nn.init.constant_(constant.bias, 1.0)  # D says "real" (1) everywhere: real term 0, fake term 1, halved
    assert discriminator_loss(constant, image, image).item() == pytest.approx(0.5)


def test_cycle_loss_trains_both_generators():
    torch.manual_seed(0)
    g, f = ResnetGenerator(width=4, blocks=1), ResnetGenerator(width=4, blocks=1)
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    (cycle_loss(f(g(x)), x, 10.0) + cycle_loss(g(f(y)), y, 10.0)).backward()
    for net in (g, f):
        assert all(p.grad is not None for p in net.parameters())
        assert sum(float(p.grad.abs().sum()) for p in net.parameters()) > 0


def test_ema_update_is_the_weighted_average():
    net = nn.Linear(3, 2)
    ema = ExponentialMovingAverage(net, decay=0.9, warmup=False)
    old = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, 0.9 * old + 0.1 * net.weight.detach())
    assert not any(p.requires_grad for p in ema.module.parameters())
    warm = ExponentialMovingAverage(net, decay=0.999, warmup=True)
    assert warm.decay_now() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.update(net)
    assert warm.updates == 1 and warm.decay_now() == pytest.approx(2 / 11)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(net, decay=1.0)


def test_partner_permutation_and_image_pool():
    pairs = [partner(5, 2, i, 3) for i in range(6)]
    assert pairs == [partner(5, 2, i, 3) for i in range(6)] and sorted(pairs) == [0, 0, 1, 1, 2, 2]
    assert any(partner(5, e, 0, 50) != partner(5, 0, 0, 50) for e in range(1, 5))  # changes with the epoch
    pool = ImagePool(2)
    first = torch.rand(2, 1, 4, 4)
    assert torch.equal(pool.query(first), first)  # filling: passed on as they are
    torch.manual_seed(0)
    second = torch.rand(6, 1, 4, 4)
    out = pool.query(second)
    stored = {tuple(t.flatten().tolist()) for t in (*first, *second)}
    assert out.shape == second.shape and all(tuple(t.flatten().tolist()) in stored for t in out)
    assert not torch.equal(out, second)  # some were swapped for earlier ones (seeded)
    assert ImagePool(0).query(second) is second


# ------------------------------------------------------------------------------------ train and export


def test_train_style_resumes_bit_identically(runs: Path):
    full, resumed = runs / "full", runs / "resumed"
    assert _sha(full / "model" / "model.safetensors") == _sha(resumed / "model" / "model.safetensors")
    assert (full / "scalars.csv").read_text() == (resumed / "scalars.csv").read_text()
    history = json.loads((full / "history.json").read_text())
    assert history["epochs"][0]["step"] == 2 and history["epochs"][0]["cycle_real"] > 0
    meta = read_document(full / "model" / "model.json")
    assert meta["kind"] == "style" and meta["name"] == "full"
    assert meta["training"]["steps"] == 2 and meta["training"]["ema_updates"] == 2
    assert meta["training_data"]["real"]["train_images"] == 4 and meta["training_data"]["drr"]["val_images"] == 2
    assert (full / "model" / "MODEL_CARD.md").is_file()


def test_export_load_and_apply(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    style = load_style(runs / "full", "cpu")  # the run folder finds RUN/model
    assert style.size == 32 and style.sha256 == _sha(runs / "full" / "model" / "model.safetensors")
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    out = apply_style(style, image)
    assert out.shape == (48, 48) and out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert not np.allclose(out, image)
    with pytest.raises(ValueError):
        apply_style(style, image[:40])
    resources = tmp_path / "Resources"
    (resources / "SampleData").mkdir(parents=True)
    shutil.copytree(runs / "full" / "model", resources / "Styles" / "tiny-style")
    monkeypatch.setenv(RESOURCES_ENV, str(resources))
    assert bundled_style_names() == ["tiny-style"]
    named = load_style("tiny-style", "cpu")
    assert named.name == "tiny-style" and np.array_equal(apply_style(named, image), out)


def test_broken_style_models_are_one_line_input_errors(runs: Path, tmp_path: Path):
    good = runs / "full" / "model"
    corrupt = shutil.copytree(good, tmp_path / "corrupt")
    with open(corrupt / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    no_json = shutil.copytree(good, tmp_path / "no_json")
    (no_json / "model.json").unlink()
    other_kind = shutil.copytree(good, tmp_path / "other_kind")
    doc = read_document(other_kind / "model.json")
    (other_kind / "model.json").write_text(json.dumps(dict(doc, kind="generator")))
    cases = {corrupt: "sha256 mismatch", no_json: "metadata missing", other_kind: "not a style",
             tmp_path / "nothing": "no such style model"}  # fmt: skip
    for path, problem in cases.items():
        with pytest.raises(InputError, match=problem) as err:
            load_style(path, "cpu")
        assert "\n" not in str(err.value) and path.name in str(err.value)
    with pytest.raises(InputError, match="unknown model kind"):
        ModelMetadata.from_dict(dict(doc, kind="bogus"), "x.json")


def test_train_style_refuses_bad_settings_in_one_line(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert _train(runs, "bad", "size=30") == 2
    assert capsys.readouterr().err.strip().count("\n") == 0 and not (runs / "bad").exists()
    assert main(["train-style", "--real", str(tmp_path / "missing"), "--drr", str(runs / "drr"), "-o",
                 str(tmp_path / "run"), "--set", "progress=false"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("x2ct: error: ") and "missing" in err and err.strip().count("\n") == 0
