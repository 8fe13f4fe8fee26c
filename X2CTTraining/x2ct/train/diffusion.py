"""Train the latent diffusion generator (:mod:`x2ct.models.latent_diffusion`) in three stages.

A :class:`~x2ct.train.engine.Trainer` on the one training engine (seeding, data order, checkpoints, bit-identical
resume, torchrun DDP, logging and AMP are the engine's). Settings: ``diffusion_default.json`` beside this file
(the only copy of the defaults), a preset or config file, then ``--set KEY=VALUE``. ``x2ct train-diffusion``:

* ``stage=vae``: the per-slice 2D VAE on axial slices of the training CTs (``vae_slices`` random slices per
  case and step): ``l1_weight`` L1 + ``perceptual_weight`` perceptual + ``adversarial_weight`` LSGAN
  (a 2D PatchGAN, MONAI ``PatchDiscriminator``, trained alongside) + ``kl_weight`` KL to N(0, I). The
  perceptual distance is LPIPS-style (unit-normalised channel features, squared difference, spatial mean,
  summed over layers) on the PatchGAN's own feature maps: a network trained here on these CTs, nothing
  downloaded (the "learned similarity" of Larsen et al. 2016). The seed used a pretrained KL-f8 VAE and did
  not train it; here it must be trained, and it takes the seed's loss mix and weights.
* ``stage=ldm``: the VAE of ``vae`` (a vae run folder or model) frozen; its latents of every training case
  are computed once (posterior means) and scaled to unit standard deviation (``latent_scale``), and with
  ``model.geometry_prior`` the cases' back-projection priors too. The ``model.prediction`` target (the seed's
  epsilon, or x0, or v) with ``noise_loss`` (the seed's L1, or MSE) x ``l1_weight``, + ``perceptual_weight`` x the
  perceptual distance between one decoded slice of the x0 prediction and the same slice of the real CT (the
  seed's LPIPS on one random decoded slice per volume; features of the frozen VAE encoder, trained here) +
  ``adversarial_weight`` x LSGAN of a 3D PatchGAN on the predicted latents (the seed's 4-layer, 32-channel
  latent discriminator). The seed's classifier loss (weight 0.08) is not used: it needs a latent-space
  disease classifier trained beforehand on labelled latents, which this package does not train yet.
* ``stage=lora``: the ``init`` model (an ldm run folder or model) with LoRA adapters (``lora_rank``,
  ``lora_alpha``) on every Conv3d / Linear of its U-Net; only the adapters train, with the ldm losses.

AdamW (``lr``, ``weight_decay``, betas) with cosine annealing per epoch from ``lr`` to ``min_lr`` (the seed's
AdamW + CosineAnnealing). Validation: the VAE's reconstruction MAE in HU (vae), or the loss on the prediction
target at fixed timesteps and noise (ldm, lora; ``val/noise_loss``), on up to :data:`VAL_CASES` validation
cases; the last weights are exported to ``RUN/model`` with :func:`x2ct.models.save_generator` (a vae run
exports the whole generator with an untrained denoiser; ``--vae`` takes its VAE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.loader import CaseDataset, case_attributes, collate, generator_sizes
from ..errors import InputError
from ..models.latent_diffusion import (
    LatentDiffusionConfig,
    LatentDiffusionGenerator,
    NoiseSchedule,
    load_radiograph_encoder,
    lora_parameter_count,
    unit_to_model,
)
from ..views import CT_KEY, LATERAL_KEY, PA_KEY
from .engine import Log, RunRecord, StepContext, Trainer, TrainResult, Validation, Wrap, run_training, stderr_log
from .settings import DefaultSettings, Settings, check_shared_settings, setting_error

DEFAULT_CONFIG = Path(__file__).with_name("diffusion_default.json")
"""The default config file; the only place the default values are written."""
PRESETS = {name: Path(__file__).with_name(f"diffusion_{name}.json") for name in ("tiny", "demo", "demo_fast", "seed")}
"""Named config files (``--preset``): ``tiny`` (tests, 32³), ``demo`` (64³, the seed's design at CPU size),
``demo_fast`` (``demo`` with x0 prediction and the geometry prior: the bundled demo), ``seed`` (the X-ray2CTPA
sizes: 256 in-plane, 64 slices, VAE /8, HU window -100..900)."""
CHECKPOINT_FORMAT = "x2ct-diffusion-checkpoint/1"
STAGES = ("vae", "ldm", "lora")
NOISE_LOSSES = ("l1", "mse")
VAL_CASES = 8
"""Validation uses at most this many cases of the validation split (it runs every ``val_every_epochs``)."""
MODEL_KEYS = frozenset(f for f in LatentDiffusionConfig.__dataclass_fields__
                       if f not in ("grid_size", "views", "lora_rank", "lora_alpha", "sad_mm", "sid_mm",
                                    "detector_mm", "drr_size"))  # fmt: skip
"""Keys of the ``model`` setting: the architecture fields a run chooses (the rest come from the data)."""
VAE_KEYS = ("hu_low", "hu_high", "depth_stride", "vae_channels", "vae_res_blocks", "latent_channels")
"""Architecture fields that belong to the VAE: the ldm stage takes them from its ``vae`` model."""

_DEFAULTS = DefaultSettings(DEFAULT_CONFIG)


@dataclass(frozen=True)
class DiffusionConfig:
    """Every setting of ``x2ct train-diffusion`` (docs/latent_diffusion.md); defaults from :data:`DEFAULT_CONFIG`."""

    data: Optional[str] = _DEFAULTS["data"]
    out: Optional[str] = _DEFAULTS["out"]
    stage: str = _DEFAULTS["stage"]
    vae: Optional[str] = _DEFAULTS["vae"]
    init: Optional[str] = _DEFAULTS["init"]
    train_split: str = _DEFAULTS["train_split"]
    val_split: str = _DEFAULTS["val_split"]
    cache: bool = _DEFAULTS["cache"]
    views: int = _DEFAULTS["views"]
    grid_size: int = _DEFAULTS["grid_size"]
    model: Dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS["model"]))
    encoder_file: Optional[str] = _DEFAULTS["encoder_file"]
    freeze_encoder: bool = _DEFAULTS["freeze_encoder"]
    noise_loss: str = _DEFAULTS["noise_loss"]
    l1_weight: float = _DEFAULTS["l1_weight"]
    perceptual_weight: float = _DEFAULTS["perceptual_weight"]
    adversarial_weight: float = _DEFAULTS["adversarial_weight"]
    kl_weight: float = _DEFAULTS["kl_weight"]
    vae_slices: int = _DEFAULTS["vae_slices"]
    disc_channels: int = _DEFAULTS["disc_channels"]
    lora_rank: int = _DEFAULTS["lora_rank"]
    lora_alpha: float = _DEFAULTS["lora_alpha"]
    lr: float = _DEFAULTS["lr"]
    disc_lr: float = _DEFAULTS["disc_lr"]
    min_lr: float = _DEFAULTS["min_lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    beta1: float = _DEFAULTS["beta1"]
    beta2: float = _DEFAULTS["beta2"]
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    seed: int = _DEFAULTS["seed"]
    device: str = _DEFAULTS["device"]
    amp: bool = _DEFAULTS["amp"]
    threads: int = _DEFAULTS["threads"]
    checkpoint_every_steps: int = _DEFAULTS["checkpoint_every_steps"]
    keep_every_epochs: int = _DEFAULTS["keep_every_epochs"]
    max_steps: int = _DEFAULTS["max_steps"]
    max_minutes: float = _DEFAULTS["max_minutes"]
    val_every_epochs: int = _DEFAULTS["val_every_epochs"]
    progress: bool = _DEFAULTS["progress"]
    tensorboard: str = _DEFAULTS["tensorboard"]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def lr_at(self, epoch: int, base: float) -> float:
        """Cosine annealing from ``base`` at epoch 0 towards ``min_lr`` at epoch ``epochs``."""
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def network(self) -> LatentDiffusionConfig:
        """The architecture these settings describe (before the data's DRR geometry is added)."""
        return LatentDiffusionConfig(grid_size=self.grid_size, views=self.views, **self.model)

    def validate(self) -> DiffusionConfig:
        """Raise :class:`InputError` (one line naming the key) for an impossible value; returns self."""
        if self.stage not in STAGES:
            raise setting_error(self, "stage", f"use one of {', '.join(STAGES)}")
        if self.noise_loss not in NOISE_LOSSES:
            raise setting_error(self, "noise_loss", f"use one of {', '.join(NOISE_LOSSES)}")
        if not isinstance(self.model, dict) or set(self.model) - MODEL_KEYS:
            raise setting_error(self, "model", f"a JSON object with keys among {', '.join(sorted(MODEL_KEYS))}")
        try:
            self.network()
        except (TypeError, ValueError) as err:
            raise setting_error(self, "model", str(err)) from None
        for key in ("lr", "disc_lr", "batch_size", "epochs", "vae_slices", "disc_channels", "lora_rank", "lora_alpha"):
            if not getattr(self, key) > 0:
                raise setting_error(self, key, "must be positive")
        for key in ("l1_weight", "perceptual_weight", "adversarial_weight", "kl_weight", "min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise setting_error(self, key, "must not be negative")
        check_shared_settings(self)
        return self


RESUMABLE_KEYS = frozenset({"data", "out", "cache", "device", "amp", "threads", "checkpoint_every_steps",
                            "keep_every_epochs", "max_steps", "max_minutes", "val_every_epochs", "progress",
                            "tensorboard"})  # fmt: skip
"""Settings that may differ between a run's checkpoint and the call that resumes it."""

SETTINGS = Settings(DiffusionConfig, _DEFAULTS, RESUMABLE_KEYS)
"""Parsing of diffusion settings (checks the default file at import)."""


def load_diffusion_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                          preset: Optional[str] = None) -> DiffusionConfig:  # fmt: skip
    """The settings: defaults, then the ``preset`` (a name of :data:`PRESETS`) or config file ``path``, then
    ``key=value`` overrides. InputError for an unknown preset or both a preset and a file."""
    if preset is not None:
        if path is not None:
            raise InputError(None, "give either --preset or --config, not both")
        if preset not in PRESETS:
            raise InputError(None, f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        path = str(PRESETS[preset])
    return SETTINGS.load(path, overrides)


# ------------------------------------------------------------------------------------------ helpers


def load_diffusion_model(path: str, what: str) -> LatentDiffusionGenerator:
    """A trainable (train mode, CPU, gradients on) copy of the ``latent_diffusion`` model at ``path``: a model
    folder / file, or a train-diffusion run folder (its ``model``). InputError when it is another kind."""
    from ..models.checkpoints import load_generator

    source = Path(path)
    if (source / "model" / "model.json").is_file():
        source = source / "model"
    loaded = load_generator(source, "cpu")
    if not isinstance(loaded, LatentDiffusionGenerator):
        raise InputError(source, f"setting {what}: holds a {loaded.architecture} generator, not a latent_diffusion one")
    model = LatentDiffusionGenerator(loaded.config)
    model.load_state_dict(loaded.state_dict())
    return model.train()


def feature_distance(features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
    """LPIPS-style distance (Zhang et al. 2018, without the learned channel weights): per layer, the features
    unit-normalised over channels, their squared difference summed over channels and averaged over space and
    cases; summed over layers."""
    total = features_a[0].new_zeros(())
    for a, b in zip(features_a, features_b):
        a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        total = total + (a - b).pow(2).sum(dim=1).mean()
    return total


def encoder_features(vae: nn.Module, images: Tensor) -> List[Tensor]:
    """The feature maps of every block of a MONAI AutoencoderKL encoder for (N, 1, H, W) model-scale images."""
    features, h = [], images
    for block in vae.encoder.blocks:
        h = block(h)
        features.append(h)
    return features


def lsgan(prediction: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss: mean (prediction - 1 or 0)²."""
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


# ------------------------------------------------------------------------------------------- trainer


class DiffusionTrainer(Trainer):
    """One stage of the latent diffusion generator (module doc); ``x2ct train-diffusion``."""

    checkpoint_format = CHECKPOINT_FORMAT
    progress_keys = ("total",)

    def __init__(self, config: DiffusionConfig, log: Log = stderr_log) -> None:
        config.validate()
        if not config.data or not config.out:
            raise InputError(None, "give the data folder (--data / data=...) and the run folder (-o / out=...)")
        if config.stage == "ldm" and not config.vae:
            raise InputError(None, "stage ldm needs the trained VAE (--vae RUN_OR_MODEL)")
        if config.stage == "lora" and not config.init:
            raise InputError(None, "stage lora needs the trained latent diffusion model (--init MODEL)")
        super().__init__(config, SETTINGS)
        self.log = log
        self.data = Path(config.data)
        sizes = generator_sizes(config.grid_size, config.views)
        self.train_set = CaseDataset(self.data, config.train_split, sizes, cache=config.cache)
        self.val_set: Optional[CaseDataset] = None
        if config.val_split and config.val_every_epochs:
            try:
                self.val_set = CaseDataset(self.data, config.val_split, sizes, cache=config.cache)
            except InputError as err:
                log(f"no validation: {err}")
        self.build = case_attributes(self.train_set.case_file(0))
        self.encoder = load_radiograph_encoder(config.encoder_file) if config.encoder_file else None

    # -- the networks

    def _network_config(self) -> LatentDiffusionConfig:
        geometry = {k: float(self.build[k]) for k in ("sad_mm", "sid_mm", "detector_mm") if k in self.build}
        drr_size = int(self.build.get("drr_size", self.config.grid_size))
        network = replace(self.config.network(), drr_size=drr_size, **geometry)
        if self.encoder is not None:
            network = replace(network, encoder=self.encoder[0])
        return network

    def _build(self) -> LatentDiffusionGenerator:
        config = self.config
        if config.stage == "vae":
            return LatentDiffusionGenerator(self._network_config())
        if config.stage == "lora":
            model = load_diffusion_model(str(config.init), "init")
            self._check_data(model.config, "init")
            model.requires_grad_(False)
            model.enable_lora(config.lora_rank, config.lora_alpha)
            return model
        vae_model = load_diffusion_model(str(config.vae), "vae")
        self._check_data(vae_model.config, "vae")
        network = replace(self._network_config(), **{k: getattr(vae_model.config, k) for k in VAE_KEYS})
        model = LatentDiffusionGenerator(network)
        model.vae.load_state_dict(vae_model.vae.state_dict())
        if self.encoder is not None:
            for encoder in model.denoiser.encoders:
                encoder.load_state_dict(self.encoder[1])
        return model

    def _check_data(self, network: LatentDiffusionConfig, what: str) -> None:
        if network.grid_size != self.config.grid_size or network.views != self.config.views:
            raise InputError(self.config.vae if what == "vae" else self.config.init,
                             f"is a {network.grid_size}³, views={network.views} model; this run trains "
                             f"grid_size={self.config.grid_size}, views={self.config.views}")  # fmt: skip

    @property
    def description(self) -> str:
        return f"latent diffusion ({self.config.stage})"

    def train_size(self) -> int:
        return len(self.train_set)

    def identity(self) -> List[str]:
        return self.train_set.case_ids

    def check_identity(self, saved: Any, out: Path) -> None:
        if saved != self.train_set.case_ids:
            split = self.config.train_split
            raise InputError(self.data, f"the {split!r} split differs from the one {out} was trained on")

    def setup(self, device: torch.device, wrap: Wrap) -> None:
        config = self.config
        self.device = device
        self.model = self._build().to(device)
        self.schedule = NoiseSchedule(self.model.config.timesteps, self.model.config.schedule)
        self.disc: Optional[nn.Module] = None
        self._optimizers: Dict[str, torch.optim.Optimizer] = {}
        from monai.networks.nets import PatchDiscriminator

        if config.stage == "vae":
            self.net = wrap(self.model.vae.autoencoder)
            trainable = list(self.model.vae.autoencoder.parameters())
            if config.adversarial_weight > 0 or config.perceptual_weight > 0:
                self.disc = PatchDiscriminator(spatial_dims=2, channels=config.disc_channels, in_channels=1,
                                               num_layers_d=3).to(device)  # fmt: skip
        else:
            self.model.vae.requires_grad_(False)
            if config.freeze_encoder or config.stage == "lora":
                self.model.denoiser.encoders.requires_grad_(False)
            self.net = wrap(self.model.denoiser)
            trainable = [p for p in self.model.denoiser.parameters() if p.requires_grad]
            if config.adversarial_weight > 0:  # the seed's latent discriminator: 3D, 4 layers, 32 channels
                self.disc = PatchDiscriminator(spatial_dims=3, channels=config.disc_channels,
                                               in_channels=self.model.config.latent_channels, num_layers_d=4,
                                               kernel_size=3).to(device)  # fmt: skip
            self.latents = self._encode_training_set()
            self.priors = self._training_priors()
        betas = (config.beta1, config.beta2)
        self._optimizers["G"] = torch.optim.AdamW(trainable, lr=config.lr, betas=betas,
                                                  weight_decay=config.weight_decay)  # fmt: skip
        if self.disc is not None:
            self.disc_wrapped = wrap(self.disc)
            self._optimizers["D"] = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr, betas=betas)
        if config.stage == "lora":
            self.log(f"LoRA rank {config.lora_rank}: {lora_parameter_count(self.model.denoiser.unet):,} trainable "
                     f"parameters of {sum(p.numel() for p in self.model.denoiser.parameters()):,}")  # fmt: skip

    @torch.no_grad()
    def _encode_training_set(self) -> List[List[Tensor]]:
        """Per training case, per depth phase, the scaled VAE latents (C, D', h, w) on the CPU; sets the VAE's
        ``latent_scale`` to 1 / the standard deviation of the unscaled latents and ``latent_bound`` to the largest
        absolute scaled latent (stage ldm; lora keeps its model's)."""
        vae = self.model.vae.eval()
        stride = self.model.config.depth_stride
        if self.config.stage == "ldm":
            vae.latent_scale.fill_(1.0)
            vae.latent_bound.fill_(float("inf"))
        raw = []
        for i in range(len(self.train_set)):
            ct = self.train_set[i].images[CT_KEY][None].to(self.device)
            raw.append([vae.encode_volume(ct, phase)[0].cpu() for phase in range(stride)])
        if self.config.stage == "ldm":
            std = torch.stack([z for case in raw for z in case]).double().std().item()
            vae.latent_scale.fill_(1.0 / max(std, 1e-6))
            self.log(f"latent standard deviation {std:.4f}: latent_scale = {1.0 / max(std, 1e-6):.4f}")
        scale = float(vae.latent_scale) if self.config.stage == "ldm" else 1.0
        latents = [[z * scale for z in case] for case in raw]
        if self.config.stage == "ldm":
            vae.latent_bound.fill_(max(float(z.abs().max()) for case in latents for z in case))
        return latents

    @torch.no_grad()
    def _training_priors(self) -> Optional[List[Tensor]]:
        """Per training case its geometry prior (views, D', h, w) on the CPU, computed once (the radiographs are
        fixed); None without ``geometry_prior``."""
        if self.model.denoiser.prior is None:
            return None
        priors = []
        for i in range(len(self.train_set)):
            images = collate([self.train_set[i]], self.device).images
            radiographs = [images[PA_KEY]] + ([images[LATERAL_KEY]] if LATERAL_KEY in images else [])
            priors.append(self.model.denoiser.geometry(radiographs)[0].cpu())
        return priors

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def networks(self) -> Dict[str, nn.Module]:
        nets: Dict[str, nn.Module] = {"G": self.model}
        if self.disc is not None:
            nets["D"] = self.disc
        return nets

    def weights(self) -> Dict[str, Tensor]:
        return self.model.state_dict()

    def load_weights(self, weights: Mapping[str, Tensor]) -> None:
        self.model.load_state_dict(weights)

    def begin_epoch(self, epoch: int) -> Dict[str, float]:
        rates = {"G": self.config.lr_at(epoch, self.config.lr), "D": self.config.lr_at(epoch, self.config.disc_lr)}
        for name, opt in self._optimizers.items():
            for group in opt.param_groups:
                group["lr"] = rates[name]
        for net in self.networks().values():
            net.train()
        if self.config.stage != "vae":
            self.model.vae.eval()
        return {"lr": rates["G"]}

    # -- one step

    def _noise_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The loss on the prediction target (noise, x0 or v): L1 (the seed's) or MSE (DDPM's), by ``noise_loss``."""
        return F.l1_loss(output, target) if self.config.noise_loss == "l1" else F.mse_loss(output, target)

    def step(self, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        batch = collate([self.train_set[i] for i in indices], context.device)
        if self.config.stage == "vae":
            return self._vae_step(batch.images[CT_KEY], context)
        return self._ldm_step(indices, batch.images, context)

    def _disc_step(self, fake: Tensor, real: Tensor, context: StepContext) -> Dict[str, float]:
        """One discriminator step: LSGAN, real -> 1, ``fake`` (detached) -> 0, halved (the seed's)."""
        d_loss = 0.5 * (lsgan(self.disc_wrapped(real.detach())[-1], True)
                        + lsgan(self.disc_wrapped(fake.detach())[-1], False))  # fmt: skip
        context.optimize("D", d_loss)
        return {"d_total": d_loss.item()}

    def _vae_step(self, ct: Tensor, context: StepContext) -> Dict[str, float]:
        config = self.config
        n, size = ct.shape[0], ct.shape[2]
        picks = torch.randint(0, size, (n, config.vae_slices))
        slices = torch.stack([ct[i, 0, picks[i]] for i in range(n)]).reshape(-1, 1, size, size)
        x = unit_to_model(slices, self.model.config)
        with context.autocast():
            recon, mu, sigma = self.net(x)
        recon, mu, sigma = context.full(recon), context.full(mu), context.full(sigma)
        l1 = (recon - x).abs().mean()
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1).mean()
        total = config.l1_weight * l1 + config.kl_weight * kl
        losses = {"l1": l1.item(), "kl": kl.item()}
        if self.disc is not None:
            self.disc.requires_grad_(False)
            fake_features, real_features = self.disc(recon), self.disc(x)
            perceptual = feature_distance(fake_features[:-1], [f.detach() for f in real_features[:-1]])
            adversarial = lsgan(fake_features[-1], True)
            self.disc.requires_grad_(True)
            total = total + config.perceptual_weight * perceptual + config.adversarial_weight * adversarial
            losses.update(perceptual=perceptual.item(), adversarial=adversarial.item())
        context.optimize("G", total)
        losses["total"] = total.item()
        if self.disc is not None and config.adversarial_weight > 0:
            losses.update(self._disc_step(recon, x, context))
        return losses

    def _ldm_step(self, indices: Sequence[int], images: Mapping[str, Tensor], context: StepContext) -> Dict[str, float]:
        config, model = self.config, self.model
        stride = model.config.depth_stride
        n = len(indices)
        phases = torch.randint(0, stride, (n,))
        z0 = torch.stack([self.latents[i][int(p)] for i, p in zip(indices, phases)]).to(context.device)
        t = torch.randint(0, self.schedule.timesteps, (n,), device=context.device)
        noise = torch.randn_like(z0)
        radiographs = [images[PA_KEY]] + ([images[LATERAL_KEY]] if LATERAL_KEY in images else [])
        prior = None if self.priors is None else torch.stack([self.priors[i] for i in indices]).to(context.device)
        prediction = model.config.prediction
        z_t = self.schedule.q_sample(z0, t, noise)
        with context.autocast():
            output = context.full(self.net(z_t, t, radiographs, prior))
        noise_term = self._noise_loss(output, self.schedule.target(z0, t, noise, prediction))
        total = config.l1_weight * noise_term
        losses = {"noise": noise_term.item()}
        x0 = self.schedule.predict_x0(z_t, t, output, prediction)
        if config.perceptual_weight > 0:  # one random decoded slice per case against the real CT's slice
            picks = torch.randint(0, model.config.depth, (n,))
            fake = model.vae.autoencoder.decode(torch.stack([x0[i, :, picks[i]] for i in range(n)])
                                                / model.vae.latent_scale)  # fmt: skip
            ct = images[CT_KEY]
            real = unit_to_model(torch.stack([ct[i, :, int(phases[i]) + stride * int(picks[i])] for i in range(n)]),
                                 model.config)  # fmt: skip
            perceptual = feature_distance(encoder_features(model.vae.autoencoder, fake),
                                          encoder_features(model.vae.autoencoder, real))  # fmt: skip
            total = total + config.perceptual_weight * perceptual
            losses["perceptual"] = perceptual.item()
        if self.disc is not None:
            self.disc.requires_grad_(False)
            adversarial = lsgan(self.disc(x0)[-1], True)
            self.disc.requires_grad_(True)
            total = total + config.adversarial_weight * adversarial
            losses["adversarial"] = adversarial.item()
        context.optimize("G", total)
        losses["total"] = total.item()
        if self.disc is not None:
            losses.update(self._disc_step(x0, z0, context))
        return losses

    # -- validation and export

    @torch.no_grad()
    def validate(self) -> Optional[Validation]:
        if self.val_set is None:
            return None
        model = self.model.eval()
        cases = range(min(VAL_CASES, len(self.val_set)))
        if self.config.stage == "vae":
            errors = []
            for i in cases:
                ct = self.val_set[i].images[CT_KEY][None].to(self.device)
                volume = model.vae.decode_volume(model.vae.encode_volume(ct))
                errors.append((volume.clamp(0, 1) - ct).abs().mean().item() * 2500.0)
            metrics = {"val/recon_mae_hu": sum(errors) / len(errors)}
        else:
            generator = torch.Generator().manual_seed(0)
            values = []
            for i in cases:
                item = collate([self.val_set[i]], self.device).images
                z0 = model.vae.encode_volume(item[CT_KEY])
                t = torch.randint(0, self.schedule.timesteps, (1,), generator=generator).to(self.device)
                noise = torch.randn(z0.shape, generator=generator).to(self.device)
                radiographs = [item[PA_KEY]] + ([item[LATERAL_KEY]] if LATERAL_KEY in item else [])
                output = model.denoiser(self.schedule.q_sample(z0, t, noise), t, radiographs)
                target = self.schedule.target(z0, t, noise, model.config.prediction)
                values.append(self._noise_loss(output, target).item())
            metrics = {"val/noise_loss": sum(values) / len(values)}
        self.model.train()
        if self.config.stage != "vae":
            self.model.vae.eval()
        return Validation(metrics, record={k.split("/", 1)[1]: v for k, v in metrics.items()})

    def export(self, run: RunRecord) -> Path:
        """The whole generator into ``RUN/model`` (x2ct.models.save_generator)."""
        from ..data.layout import read_manifest
        from ..models.checkpoints import save_generator

        counts: Dict[str, int] = {}
        for row in read_manifest(self.data):
            counts[row["split"]] = counts.get(row["split"], 0) + 1
        keep = ("size", "drr_size", "sad_mm", "sid_mm", "detector_mm", "source_kind", "source", "source_sha256",
                "synthetic_seed")  # fmt: skip
        training: Dict[str, Any] = {"stage": self.config.stage, "config": self.config.to_dict(), **run.to_dict()}
        if self.model.config.lora_rank:
            training["lora_trainable_parameters"] = lora_parameter_count(self.model.denoiser.unet)
        target = Path(self.config.out) / "model"
        model = self.model.to("cpu").eval()
        save_generator(
            model,
            target,
            drr_geometry={k: self.build.get(k) for k in ("sad_mm", "sid_mm", "detector_mm", "drr_size")},
            quantize_bits=8,
            training_data={
                "folder": str(self.data),
                "split_counts": counts,
                "train_cases": len(self.train_set),
                "build": {k: self.build[k] for k in keep if k in self.build},
            },  # fmt: skip
            training=training,
        )
        return target


def train_diffusion(config: DiffusionConfig, log: Log = stderr_log) -> TrainResult:
    """Train (or resume) the run ``config.out``; see the module docstring."""
    return run_training(DiffusionTrainer(config, log), resume=None, log=log)
