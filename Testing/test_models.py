"""X2CT-GAN models and checkpoints: official-format compatibility, inference semantics, safe loading.

The three manifests in Testing/data/ list every state_dict entry of the official X2CT-GAN networks
(kylekma/X2CT, built with its ``3DGAN/lib/model/nets/factory.py``), one ``name<TAB>shape`` line each.
Official-size networks are only built and loaded here, never run: full-size forward passes belong to
bench/generator.py.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from x2ct.errors import InputError
from x2ct.models import (
    GeneratorConfig,
    PatchDiscriminator3D,
    X2CTBiplanar,
    X2CTSingleView,
    conditional_input,
    convert_checkpoint,
    load_generator,
)
from x2ct.models.checkpoints import (
    HEADER_KEY,
    bundled_model_names,
    models_dir,
    read_official_state_dict,
    resolve_device,
    save_generator,
)
from x2ct.models.fast_ops import conv3d_fft, conv_transpose_subpixel

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parent / "data"
TINY = GeneratorConfig(grid_size=64, width=0.125)



def read_manifest(name: str) -> OrderedDict[str, Tuple[int, ...]]:
    entries: OrderedDict[str, Tuple[int, ...]] = OrderedDict()
    for line in (DATA / f"x2ct_official_{name}_manifest.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        entries[key] = tuple(ast.literal_eval(shape))
    return entries


def random_state(manifest: Dict[str, Tuple[int, ...]], seed: int = 0) -> OrderedDict[str, Tensor]:
    """An official-format state_dict with random weights (running stats positive, counters int64)."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


def official_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Official init_net: conv/linear weights N(0, 0.02), biases 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if name.endswith("weight") else torch.zeros_like(p))
    return model


def save_official(state: Dict[str, Tensor], path: Path, prefix: str = "") -> Path:
    torch.save({"iters": 1000, "epoch": 90, "state_dict": {prefix + k: v for k, v in state.items()}, "lr": 2e-4}, path)
    return path


def images(n: int = 1, size: int = 64, seed: int = 1) -> Tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=gen), torch.rand(n, 1, size, size, generator=gen)


# --------------------------------------------------------------------------------------------------
# Official state_dict compatibility
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "factory", "n_params"),
    [
        ("singleview", X2CTSingleView, 29_384_481),
        ("generator", X2CTBiplanar, 61_740_467),
        ("discriminator", lambda: PatchDiscriminator3D(views=2), 11_055_169),
    ],
)
def test_official_state_dicts_load_strictly(manifest: str, factory, n_params: int) -> None:
    expected = read_manifest(manifest)
    model = factory()
    ours = model.state_dict()
    assert list(ours) == list(expected)  # same names, same order, no extras
    assert {k: tuple(v.shape) for k, v in ours.items()} == dict(expected)
    assert sum(p.numel() for p in model.parameters()) == n_params
    state = random_state(expected)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.state_dict()[next(iter(expected))], state[next(iter(expected))])


def test_singleview_discriminator_differs_only_in_first_conv() -> None:
    manifest = read_manifest("discriminator")
    manifest["model.0.weight"] = (64, 2, 4, 4, 4)
    model = PatchDiscriminator3D(views=1)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(manifest)
    assert sum(p.numel() for p in model.parameters()) == 11_051_073


def test_hyphenated_level_names_are_registered() -> None:
    model = X2CTBiplanar(TINY)
    names = dict(model.named_modules())
    for name in ("decoder_layer-1", "view1Model.decoder_layer-1", "view2Model.decoder_compress_layer-1"):
        assert name in names


def test_official_pth_loads_through_load_generator(tmp_path: Path) -> None:
    manifest = read_manifest("singleview")
    state = random_state(manifest, seed=3)
    path = save_official(state, tmp_path / "30_net_G.pth", prefix="module.")
    model = load_generator(path)
    assert isinstance(model, X2CTSingleView)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in manifest)
    assert model.metadata.architecture == "x2ct_gan_singleview" and model.metadata.kind == "generator"
    assert model.metadata.input_size("pa") == 128 and len(model.metadata.sha256) == 64
    assert model.metadata.outputs["ct"].spatial_shape == (128, 128, 128)


def test_biplanar_inferred_from_keys(tmp_path: Path) -> None:
    path = save_official(random_state(read_manifest("generator")), tmp_path / "90_net_G.pth")
    model = load_generator(path, device="cpu")
    assert isinstance(model, X2CTBiplanar) and model.config == GeneratorConfig()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch_file = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _Evil(marker)}}, torch_file)
    raw_file = tmp_path / "evil_raw.pth"
    raw_file.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    for path in (torch_file, raw_file):
        with pytest.raises(InputError) as err:
            load_generator(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    wrong_keys = save_official({"foo.weight": torch.zeros(3)}, tmp_path / "wrong_keys.pth")
    state = random_state(read_manifest("singleview"))
    state["decoder_layer.0.weight"] = torch.zeros(1, 16, 5, 5, 5)
    wrong_shape = save_official(state, tmp_path / "wrong_shape.pth")
    del state["decoder_layer.0.bias"]
    missing = save_official(state, tmp_path / "missing.pth")
    for path, needle in (
        (text, "not a loadable"),
        (wrong_keys, "not an X2CT-GAN"),
        (wrong_shape, "wrong shape"),
        (missing, "missing"),
        (tmp_path / "absent.pth", "no such file"),
    ):
        with pytest.raises(InputError, match=needle) as err:
            load_generator(path)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="not a file and not a bundled model"):
        load_generator("no-such-model-name")


def test_read_official_accepts_bare_state_dict(tmp_path: Path) -> None:
    model = X2CTSingleView(TINY)
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    assert list(read_official_state_dict(path)) == list(model.state_dict())


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


# --------------------------------------------------------------------------------------------------
# Our format
# --------------------------------------------------------------------------------------------------


def test_conversion_round_trips_and_sha256_is_checked(tmp_path: Path) -> None:
    official = official_init(X2CTBiplanar(TINY), seed=5)
    src = save_official(official.state_dict(), tmp_path / "tiny_net_G.pth")
    meta_path = convert_checkpoint(src, tmp_path / "tiny.safetensors", metrics={"note": "untrained"})
    metadata = json.loads(meta_path.read_text())
    assert (metadata["schema"], metadata["schema_version"], metadata["kind"]) == ("x2ct-model", 2, "generator")
    assert metadata["network"] == {
        "architecture": "x2ct_gan_biplanar",
        "config": {"grid_size": 64, "width": 0.125, "dropout": 0.5},
    }
    assert metadata["metrics"] == {"note": "untrained"}
    formats = metadata["network_data_format"]
    assert set(formats["inputs"]) == {"pa", "lateral"} and formats["inputs"]["lateral"]["view"] == "LATERAL"
    assert formats["outputs"]["ct"]["preprocessing"] == {"hu_offset": 1024.0, "unit_range": 2500.0}
    assert formats["outputs"]["ct"]["spatial_shape"] == [64, 64, 64]
    folder_meta = convert_checkpoint(tmp_path / "tiny.safetensors", tmp_path / "tiny_folder")
    assert folder_meta == tmp_path / "tiny_folder" / "model.json"

    pa, lateral = images()
    outputs = []
    for path in (src, tmp_path / "tiny.safetensors", meta_path, tmp_path / "tiny_folder"):
        model = load_generator(path)
        with torch.inference_mode():
            outputs.append(model(pa, lateral))
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])

    weights = tmp_path / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch") as err:
        load_generator(weights)
    assert "tiny.safetensors" in str(err.value)


def test_saving_is_byte_reproducible(tmp_path: Path) -> None:
    """safetensors keeps ``__metadata__`` in a hash map whose order varies per save: we write one key only."""
    model = official_init(X2CTSingleView(TINY), seed=3)
    first = {"note": "untrained", "scores": {"mae": 1.5, "ssim": 0.5}}
    second = {"scores": {"ssim": 0.5, "mae": 1.5}, "note": "untrained"}  # same content, other insertion order
    saved = []
    for i in range(8):  # the old two-key header came out in either order: 8 saves all agreeing by luck is 1/128
        order = first if i % 2 == 0 else second
        extra = {"b": 1, "a": 2} if i % 2 else {"a": 2, "b": 1}
        meta_path = save_generator(model, tmp_path / str(i) / "tiny.safetensors", metrics=order, training=extra)
        weights = meta_path.with_suffix(".safetensors")
        sha256 = json.loads(meta_path.read_text())["weights"]["sha256"]
        saved.append((weights.read_bytes(), meta_path.read_text(), sha256))
        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata()
        assert list(header) == [HEADER_KEY]
        assert json.loads(header[HEADER_KEY]) == {
            "schema": "x2ct-model",
            "schema_version": 2,
            "kind": "generator",
            "architecture": "x2ct_gan_singleview",
            "config": {"grid_size": 64, "width": 0.125, "dropout": 0.5},
        }
    assert all(item == saved[0] for item in saved[1:])
    assert saved[0][2] == hashlib.sha256(saved[0][0]).hexdigest()


def test_files_with_the_old_two_key_header_still_load(tmp_path: Path) -> None:
    """Weights written before the one-key header ({format, architecture}) load, sha256 checked as recorded."""
    model = official_init(X2CTSingleView(TINY), seed=4)
    meta_path = save_generator(model, tmp_path / "new")
    old_weights = tmp_path / "new" / "model.safetensors"
    save_file(model.state_dict(), str(old_weights), metadata={"format": "x2ct-generator", "architecture": "x"})
    metadata = json.loads(meta_path.read_text())
    metadata["weights"]["sha256"] = hashlib.sha256(old_weights.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(metadata))
    loaded = load_generator(tmp_path / "new")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", bundled_model_names())
def test_bundled_models_keep_loading(name: str) -> None:
    """The shipped files load with their recorded sha256 verified (they were saved with the old header)."""
    model = load_generator(name)
    weights = models_dir() / name / "model.safetensors"
    assert model.metadata.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model.metadata.name == name and model.metadata.version and model.metadata.changelog


def test_bundled_model_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = tmp_path / "Resources"
    (resources / "SampleData").mkdir(parents=True)
    monkeypatch.setenv("X2CT_RESOURCES", str(resources))
    with pytest.raises(InputError, match="none are installed"):
        load_generator("demo_biplanar")
    src = save_official(X2CTSingleView(TINY).state_dict(), tmp_path / "s.pth")
    convert_checkpoint(src, resources / "Models" / "demo_singleview")
    model = load_generator("demo_singleview")
    assert isinstance(model, X2CTSingleView) and model.metadata.name == "demo_singleview"
    with pytest.raises(InputError, match="available: demo_singleview"):
        load_generator("demo_biplanar")


# --------------------------------------------------------------------------------------------------
# Inference semantics
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_biplanar() -> X2CTBiplanar:
    return official_init(X2CTBiplanar(TINY), seed=11).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tiny_single() -> X2CTSingleView:
    return official_init(X2CTSingleView(TINY), seed=12).eval()  # type: ignore[return-value]


def test_forward_shapes_and_range(tiny_biplanar: X2CTBiplanar, tiny_single: X2CTSingleView) -> None:
    pa, lateral = images(n=2)
    with torch.inference_mode():
        for out in (tiny_biplanar(pa, lateral), tiny_single(pa)):
            assert out.shape == (2, 1, 64, 64, 64) and out.dtype == torch.float32
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and float(out.max()) > 0.0
    with pytest.raises(ValueError, match="lateral"):
        tiny_biplanar(pa)
    with pytest.raises(ValueError, match="no lateral"):
        tiny_single(pa, lateral)
    with pytest.raises(ValueError, match=r"\(N,1,64,64\)"):
        tiny_single(torch.rand(1, 1, 32, 32))


def test_training_mode_returns_raw_output() -> None:
    model = official_init(X2CTSingleView(TINY), seed=4).train()
    out = model(images()[0])
    assert out.requires_grad and float(out.detach().max()) > 1.0  # unclamped ReLU output, as the official losses see it


def test_skipping_view_heads_is_bit_identical(tiny_biplanar: X2CTBiplanar) -> None:
    pa, lateral = images()
    for fast in (False, True):
        tiny_biplanar.fast_inference = fast
        with torch.inference_mode():
            fused = tiny_biplanar(pa, lateral)
            all_heads = tiny_biplanar.forward_with_view_heads(pa, lateral)
        assert torch.equal(fused, all_heads[0])
        assert all(v.shape == fused.shape for v in all_heads[1:])
    tiny_biplanar.fast_inference = True


@pytest.mark.parametrize("which", ["biplanar", "single"])
def test_fast_inference_matches_plain_path(which: str, tiny_biplanar, tiny_single) -> None:
    model = tiny_biplanar if which == "biplanar" else tiny_single
    pa, lateral = images()
    args = (pa, lateral) if which == "biplanar" else (pa,)
    with torch.inference_mode():
        model.fast_inference = False
        plain = model(*args)
        model.fast_inference = True
        fast = model(*args)
    assert float((plain - fast).abs().max()) <= 1e-4


def test_instance_statistics_are_used_not_running_buffers(tiny_single: X2CTSingleView) -> None:
    pa = images()[0]
    with torch.inference_mode():
        before = tiny_single(pa)
        saved = {k: v.clone() for k, v in tiny_single.state_dict().items() if "running" in k}
        for name, buf in tiny_single.named_buffers():
            if "running_mean" in name:
                buf.fill_(3.0)
            elif "running_var" in name:
                buf.fill_(0.01)
        after = tiny_single(pa)
        tiny_single.load_state_dict(saved, strict=False)
    assert torch.equal(before, after)
    assert all(torch.equal(tiny_single.state_dict()[k], v) for k, v in saved.items())  # never updated


def test_fast_ops_match_torch_layers() -> None:
    gen = torch.Generator().manual_seed(0)
    up = nn.ConvTranspose3d(6, 5, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(2, 6, 5, 6, 7, generator=gen)
    assert torch.allclose(conv_transpose_subpixel(up, x), up(x), atol=1e-5)
    head = nn.Conv3d(4, 1, 7, padding=3)
    y = torch.randn(1, 4, 9, 10, 11, generator=gen)
    assert torch.allclose(conv3d_fft(head, y), head(y), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Output orientation: canonical (D,H,W) for +S and +B
# --------------------------------------------------------------------------------------------------


def _delta(conv: nn.Module, out_channel: int, in_channel: int, value: float = 1.0) -> None:
    """Make ``conv`` copy ``in_channel`` into ``out_channel`` (centre tap ``value``)."""
    centre = tuple(k // 2 for k in conv.weight.shape[2:])
    conv.weight[(out_channel, in_channel, *centre)] = value


def _pass_linker0_through(branch: nn.Module, compress: nn.Module) -> None:
    """Branch: stem copies the image into channel 0, linker 0 carries it into 3D, ``compress`` keeps it."""
    _delta(branch.encoder_layer[1], 0, 0)
    _delta(branch.linker_layer0[0].compress_block[0], 0, 0)
    _delta(branch.linker_layer0[0].conv_block[0], 0, 0)
    cx = compress.weight.shape[1] // 2  # cat[decoder, linker]: the linker's channel 0 is input cx
    _delta(compress, 0, cx)


@torch.no_grad()
def _orientation_models() -> Tuple[X2CTSingleView, X2CTBiplanar]:
    """Models whose output is (a monotone function of) the radiographs lifted along their rays: all
    weights zero except channel-0 identities along stem -> linker 0 -> level -1 -> head."""
    single, biplanar = X2CTSingleView(TINY), X2CTBiplanar(TINY)
    for model in (single, biplanar):
        for p in model.parameters():
            p.zero_()
    level = getattr(single, "decoder_layer-1")
    _pass_linker0_through(single, level[0])
    _delta(level[3], 0, 0)
    _delta(single.decoder_layer[0], 0, 0, 0.01)  # keep the output below the clamp at 1
    for branch in (biplanar.view1Model, biplanar.view2Model):
        _pass_linker0_through(branch, getattr(branch, "decoder_compress_layer-1")[0])
    fused = getattr(biplanar, "decoder_layer-1")
    _delta(fused[0], 0, 0)  # cat[average, previous]: keep the average's channel 0
    _delta(fused[3], 0, 0)
    _delta(biplanar.decoder_layer[0], 0, 0, 0.01)
    return single.eval(), biplanar.eval()


@pytest.mark.parametrize("fast", [False, True])
def test_outputs_are_in_canonical_order(fast: bool) -> None:
    """PA row r / column c -> (D=r, W=c); lateral row r / column c -> (D=r, H=c) (x2ct.geometry, x2ct.views)."""
    single, biplanar = _orientation_models()
    row, pa_col, lat_col = 9, 47, 21
    pa = torch.zeros(1, 1, 64, 64)
    pa[0, 0, row, pa_col] = 1.0
    lateral = torch.zeros(1, 1, 64, 64)
    lateral[0, 0, row, lat_col] = 1.0
    with torch.inference_mode():
        single.fast_inference = fast
        biplanar.fast_inference = fast
        s = single(pa)[0, 0]
        b = biplanar(pa, lateral)[0, 0]
    # +S: a line along H (the PA ray) through D=row, W=pa_col.
    line = s[row, :, pa_col]
    assert 0.0 < float(s.max()) < 1.0
    assert torch.allclose(line, torch.full_like(line, float(s.max())), atol=1e-5)
    frontal = s.mean(dim=1)  # projection over H
    assert divmod(int(frontal.argmax()), 64) == (row, pa_col)
    # +B: the PA line (along H) and the lateral line (along W) meet at (row, lat_col, pa_col).
    assert divmod(int(b.argmax()), 64 * 64) == (row, lat_col * 64 + pa_col)
    assert float(b[row, :, pa_col].mean()) > float(b[row + 5, :, pa_col].mean())  # PA line present
    assert float(b[row, lat_col, :].mean()) > float(b[row + 5, lat_col, :].mean())  # lateral line present


def test_conditional_discriminator_input_and_shape() -> None:
    ct = torch.rand(1, 1, 64, 64, 64)
    pa, lateral = images()
    x = conditional_input(ct, pa, lateral)
    assert x.shape == (1, 3, 64, 64, 64)
    assert torch.equal(x[0, 0, :, 5, :], pa[0, 0]) and torch.equal(x[0, 1, :, :, 7], lateral[0, 0])
    assert torch.equal(x[0, 2], ct[0, 0])
    disc = PatchDiscriminator3D(views=2, ndf=4)
    with torch.inference_mode():
        assert disc(ct, pa, lateral).shape == (1, 1, 11, 11, 11)
    with pytest.raises(ValueError, match="2 view"):
        disc(ct, pa)
