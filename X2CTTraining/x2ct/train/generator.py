"""Train an X2CT-GAN generator (+B biplanar or +S single view) with the official losses and schedule.

Read top to bottom: setup, models, optimisers, resume, then the loop. One iteration, as in the
official ``optimize_parameters``::

    fake = G(x)                                       # raw ReLU output, dropout on
    G step (D frozen): 0.1·LSGAN(D(x, fake), 1) + 10·MSE(fake, ct) + 10·mean_axes L1(proj fake, proj ct)
    D step:            0.1·(LSGAN(D(x, ct), 1) + LSGAN(D(x, fake.detach()), 0))

Run folder ``OUT``::

    config.json                 the resolved settings
    checkpoints/last.pt         everything needed to continue (atomic; loads with weights_only=True)
    checkpoints/epoch_XXXX.pt   copies every ``keep_every_epochs`` epochs
    scalars.csv                 step,tag,value (always; TensorBoard too, see the ``tensorboard`` setting)
    tensorboard/                scalars and sample montages (``tensorboard=auto``: when the package is installed)
    samples/epoch_XXXX.png      montage: input radiograph(s), then GT and prediction mid-slices
    model/                      the final generator, exported with x2ct.models.checkpoints

Resume: running again on the same ``OUT`` continues from ``checkpoints/last.pt``. The checkpoint holds
the weights, both optimisers, the AMP scalers, the torch/CUDA/numpy/python RNG states and the data
order of the epoch in progress, so a run interrupted after any checkpoint and resumed ends with the
same weights, bit for bit, as an uninterrupted run (same device, thread count and library versions).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_path, write_text_atomic
from ..data.loader import X2CTDataset, collate, read_manifest
from ..errors import InputError
from ..losses import LossWeights, discriminator_loss, generator_loss
from ..models.checkpoints import resolve_device
from ..models.x2ct_gan import GeneratorConfig, PatchDiscriminator3D, X2CTBiplanar, X2CTSingleView
from .config import SETTINGS, TrainConfig, config_from_dict

CHECKPOINT_FORMAT = "x2ct-train-checkpoint/1"
"""``format`` entry of our training checkpoints."""

LAST = "last.pt"
SCALARS = "scalars.csv"
INIT_STD = 0.02
"""Official initialisation: every Conv*/Linear weight ~ N(0, 0.02), biases 0 (``init_net`` 'normal')."""

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ building


def build_generator(config: TrainConfig) -> nn.Module:
    """The generator a config describes (untrained weights, default PyTorch init)."""
    gconfig = GeneratorConfig(grid_size=config.grid_size, width=config.width)
    return X2CTBiplanar(gconfig) if config.views == 2 else X2CTSingleView(gconfig)


def init_weights(net: nn.Module, std: float = INIT_STD) -> nn.Module:
    """Official ``init_weights('normal')``: Conv*/ConvTranspose*/Linear weights ~ N(0, std), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled case order of one epoch: a pure function of (seed, epoch), independent of global RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


# ---------------------------------------------------------------------------------------- RNG states


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors/lists/ints (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ------------------------------------------------------------------------------------------- logging


def tensorboard_writer(mode: str) -> Optional[type]:
    """``SummaryWriter`` for ``tensorboard=on|auto`` when the package imports, else None.

    ``on`` without the package is an :class:`InputError` (one line, raised before anything is written);
    ``auto`` without it returns None and the run logs one note; ``off`` always returns None.
    """
    if mode == "off":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if mode == "on":
            raise InputError(
                None,
                "tensorboard=on but the tensorboard package is not installed "
                "(pip install 'x2ct[train]', or --set tensorboard=auto|off)",
            ) from None
        return None
    return SummaryWriter


class ScalarLog:
    """Scalars to ``OUT/scalars.csv`` (step,tag,value) and, given a ``writer`` class, TensorBoard; images likewise."""

    def __init__(self, out: Path, resume_step: int, writer: Optional[type]) -> None:
        self.path = out / SCALARS
        kept: List[List[str]] = []
        if resume_step and self.path.is_file():  # drop what was logged after the checkpoint
            with open(self.path, newline="") as fh:
                kept = [row for row in list(csv.reader(fh))[1:] if int(row[0]) <= resume_step]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([["step", "tag", "value"], *kept])
        write_text_atomic(self.path, buffer.getvalue())
        self._fh = open(self.path, "a", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        purge = resume_step + 1 if resume_step else None
        self.tb = writer(str(out / "tensorboard"), purge_step=purge) if writer is not None else None

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        for tag, value in values.items():
            self._csv.writerow([step, tag, repr(float(value))])
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step)
        self._fh.flush()

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, image[None], step)  # (1, H, W) uint8

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


def montage(pa: torch.Tensor, lateral: Optional[torch.Tensor], ct: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """uint8 image: row 1 the radiograph(s); rows 2-3 GT and prediction mid-slices (axial, coronal, sagittal)."""

    def slices(v: torch.Tensor) -> List[np.ndarray]:
        v = v.detach().float().clamp(0, 1).cpu().numpy()[0, 0]
        d, h, w = (s // 2 for s in v.shape)
        return [v[d], v[:, h], v[:, :, w]]

    s = ct.shape[-1]
    blank = np.zeros((s, s), np.float32)
    second = blank if lateral is None else lateral.detach().float().cpu().numpy()[0, 0]
    top = [pa.detach().float().cpu().numpy()[0, 0], second, blank]
    rows = [np.concatenate(r, axis=1) for r in (top, slices(ct), slices(fake))]
    return (np.concatenate(rows, axis=0).clip(0, 1) * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """``torch.save`` under a temporary name, then rename (x2ct.atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: Path, device: Union[str, torch.device] = "cpu", expected_format: str = CHECKPOINT_FORMAT
) -> Dict[str, Any]:
    """A training checkpoint whose ``format`` entry is ``expected_format`` (the generator's by default; the
    classifier's is x2ct.classify.train.CHECKPOINT_FORMAT), loaded with ``weights_only=True``.
    InputError when it is not one."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise InputError(path, f"not a readable training checkpoint ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise InputError(path, f"not an x2ct training checkpoint (expected format {expected_format})")
    return state


LoopPosition = Tuple[int, int, int, float, torch.Tensor]
"""Where a resumable training loop stands: (epoch, step in epoch, global step, seconds trained, epoch order)."""


def start_position(seed: int, n: int) -> LoopPosition:
    """The position of a new run: epoch 0, step 0, and epoch 0's case order."""
    return 0, 0, 0, 0.0, epoch_order(seed, 0, n)


def restore_position(state: Mapping[str, Any], out: Path, epochs: int, total_steps: int, log: Log) -> LoopPosition:
    """The position stored in a training checkpoint; also restores every RNG and says where it resumes."""
    set_rng_state(state["rng"])
    epoch, global_step = state["epoch"], state["global_step"]
    log(f"resuming {out} at epoch {epoch + 1}/{epochs}, step {global_step}/{total_steps}")
    return epoch, state["step_in_epoch"], global_step, state["seconds"], state["order"]


def position_record(
    checkpoint_format: str, config: Any, epoch: int, step_in_epoch: int, global_step: int, seconds: float,
    order: torch.Tensor,
) -> Dict[str, Any]:  # fmt: skip
    """The entries every training checkpoint starts with (format, version, settings, position, RNG states)."""
    return {
        "format": checkpoint_format,
        "x2ct_version": __version__,
        "config": config.to_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "seconds": seconds,
        "order": order,
        "rng": rng_state(),
    }


def start_run_folder(out: Path, config: Any) -> None:
    """Create a new run folder with its ``config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")


def generator_from_checkpoint(path: Path, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The generator of a training checkpoint, on ``device``, in eval mode."""
    state = load_checkpoint(path, device)
    net = build_generator(config_from_dict(state["config"]))
    net.load_state_dict(state["G"])
    net.metadata = {"source": str(path), "training_checkpoint": True, "global_step": state["global_step"]}
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    """What :func:`train_generator` did: final step/epoch, the run folder, the last losses, the export."""

    out: Path
    global_step: int
    epoch: int
    finished: bool
    seconds: float
    last_losses: Dict[str, float] = field(default_factory=dict)
    model_dir: Optional[Path] = None


def _dataset_summary(data: Path, train: X2CTDataset) -> Dict[str, Any]:
    """Provenance of the training data (for the model metadata): manifest counts and the build's conventions."""
    import h5py

    counts: Dict[str, int] = {}
    for row in read_manifest(data):
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    with h5py.File(data / train.rows[0]["path"], "r") as f:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
    keep = (
        "size",
        "drr_size",
        "sad_mm",
        "sid_mm",
        "detector_mm",
        "ct_convention",
        "xray_convention",
        "axes",
        "source_kind",
        "source",
        "source_sha256",
        "synthetic_seed",
        "synthetic_drrs",
        "body_mask",
    )
    return {
        "folder": str(data),
        "split_counts": counts,
        "train_cases": len(train),
        "build": {k: attrs[k] for k in keep if k in attrs},
    }


def train_generator(config: TrainConfig, log: Log = _stderr) -> TrainResult:
    """Train (or resume) the run ``config.out`` on ``config.data``; see the module docstring.

    Sets torch's thread count (``threads``) and flush-denormal mode for the run and restores them after.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config, log)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _train(config: TrainConfig, log: Log) -> TrainResult:
    config.validate()
    if not config.data or not config.out:
        raise InputError(None, "give the data folder (--data / data=...) and the run folder (-o / out=...)")
    data, out = Path(config.data), Path(config.out)
    writer = tensorboard_writer(config.tensorboard)  # tensorboard=on without the package fails here
    ckpt_dir = out / "checkpoints"

    # ---- resume or start: the checkpoint's settings win, except the bookkeeping keys
    resume = ckpt_dir / LAST
    state: Optional[Dict[str, Any]] = load_checkpoint(resume) if resume.is_file() else None
    if state is not None:
        SETTINGS.check_resume(state["config"], config, out)

    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # Denormal floats take a slow path in CPU kernels; flushing them to zero is part of the procedure
    # (always on, so an interrupted and resumed run computes exactly what an uninterrupted one does).
    torch.set_flush_denormal(True)

    # ---- data
    train_set = X2CTDataset(data, config.train_split, config.grid_size, config.views, cache=config.cache)
    val_set = None
    if config.val_split and config.val_every_epochs:
        try:
            val_set = X2CTDataset(data, config.val_split, config.grid_size, config.views, cache=config.cache)
        except InputError as err:
            log(f"no validation: {err}")
    n = len(train_set)
    batches_per_epoch = math.ceil(n / config.batch_size)
    total_steps = batches_per_epoch * config.epochs
    if state is not None and state["train_cases"] != train_set.case_ids:
        raise InputError(data, f"the {config.train_split!r} split differs from the one {out} was trained on")

    # ---- models, optimisers, AMP scalers (seeded, so a fresh run is reproducible)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    G = init_weights(build_generator(config)).to(device)
    D = init_weights(PatchDiscriminator3D(views=config.views, ndf=config.ndf)).to(device)
    betas = (config.beta1, config.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=config.lr, betas=betas)
    scaler_G = torch.amp.GradScaler(device.type, enabled=amp)
    scaler_D = torch.amp.GradScaler(device.type, enabled=amp)
    weights = LossWeights(config.gan_weight, config.recon_weight, config.projection_weight)

    epoch, step_in_epoch, global_step, seconds, order = start_position(config.seed, n)
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        scaler_G.load_state_dict(state["scaler_G"])
        scaler_D.load_state_dict(state["scaler_D"])
        position = restore_position(state, out, config.epochs, total_steps, log)
        epoch, step_in_epoch, global_step, seconds, order = position
    else:
        start_run_folder(out, config)

    def checkpoint(next_epoch: int, next_step: int, next_order: torch.Tensor) -> None:
        save_checkpoint(
            resume,
            {
                **position_record(
                    CHECKPOINT_FORMAT,
                    config,
                    next_epoch,
                    next_step,
                    global_step,
                    seconds + (time.perf_counter() - started),
                    next_order,
                ),
                "train_cases": train_set.case_ids,
                "G": G.state_dict(),
                "D": D.state_dict(),
                "opt_G": opt_G.state_dict(),
                "opt_D": opt_D.state_dict(),
                "scaler_G": scaler_G.state_dict(),
                "scaler_D": scaler_D.state_dict(),
            },
        )

    if writer is None and config.tensorboard == "auto":
        log(
            f"tensorboard is not installed: scalars go to {out / SCALARS} and montages to {out / 'samples'} "
            "only (pip install 'x2ct[train]' for TensorBoard)"
        )
    scalars = ScalarLog(out, global_step, writer)
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc=f"train {G.architecture}",
        unit="step",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    losses: Dict[str, float] = {}
    stopped = bool(config.max_steps) and global_step >= config.max_steps
    try:
        while epoch < config.epochs and not stopped:
            lr = config.lr * config.lr_factor(epoch)
            for opt in (opt_G, opt_D):
                for group in opt.param_groups:
                    group["lr"] = lr
            G.train()
            D.train()
            for b in range(step_in_epoch, batches_per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size].tolist()
                batch = collate([train_set[i] for i in idx], device)
                pa, lateral, ct = batch["pa"], batch["lateral"], batch["ct"]

                with torch.autocast(device.type, enabled=amp):
                    fake = G(pa, lateral)
                # G step, D frozen
                D.requires_grad_(False)
                with torch.autocast(device.type, enabled=amp):
                    d_fake = D(fake, pa, lateral)
                g_terms = generator_loss(d_fake.float(), fake.float(), ct, weights)
                opt_G.zero_grad(set_to_none=True)
                scaler_G.scale(g_terms["g_total"]).backward()
                scaler_G.step(opt_G)
                scaler_G.update()
                # D step on the same (detached) fake
                D.requires_grad_(True)
                with torch.autocast(device.type, enabled=amp):
                    d_real, d_fake = D(ct, pa, lateral), D(fake.detach(), pa, lateral)
                d_terms = discriminator_loss(d_real.float(), d_fake.float(), weights)
                opt_D.zero_grad(set_to_none=True)
                scaler_D.scale(d_terms["d_total"]).backward()
                scaler_D.step(opt_D)
                scaler_D.update()

                global_step += 1
                losses = {k: v.item() for k, v in {**g_terms, **d_terms}.items()}
                scalars.scalars(global_step, {**{f"loss/{k}": v for k, v in losses.items()}, "lr": lr})
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, g=f"{losses['g_total']:.4f}", d=f"{losses['d_total']:.4f}")
                done_epoch = b + 1 == batches_per_epoch
                stopped = bool(config.max_steps) and global_step >= config.max_steps
                every = config.checkpoint_every_steps
                if not done_epoch and (stopped or (every and global_step % every == 0)):
                    checkpoint(epoch, b + 1, order)
                if stopped and not done_epoch:
                    break
            else:
                # ---- end of epoch: validation, montage, checkpoint
                epoch += 1
                step_in_epoch = 0
                order = epoch_order(config.seed, epoch, n)
                if val_set is not None and epoch % config.val_every_epochs == 0:
                    scalars.scalars(global_step, validate(G, val_set, device))
                if config.sample_every_epochs and epoch % config.sample_every_epochs == 0:
                    write_sample(G, val_set or train_set, device, out, epoch, global_step, scalars)
                checkpoint(epoch, 0, order)
                if config.keep_every_epochs and epoch % config.keep_every_epochs == 0:
                    keep = ckpt_dir / f"epoch_{epoch:04d}.pt"
                    with atomic_path(keep) as tmp:
                        tmp.write_bytes(resume.read_bytes())
    finally:
        bar.close()
        scalars.close()

    seconds += time.perf_counter() - started
    finished = epoch >= config.epochs
    result = TrainResult(out, global_step, epoch, finished, seconds, losses)
    if finished:
        result.model_dir = export_trained(G, config, data, train_set, out / "model", seconds, global_step)
        minutes = seconds / 60
        log(f"finished {config.epochs} epochs ({global_step} steps, {minutes:.1f} min); model in {result.model_dir}")
    else:
        log(f"stopped at step {global_step}/{total_steps}; run again with the same -o to continue")
    return result


@torch.no_grad()
def validate(G: nn.Module, val_set: X2CTDataset, device: torch.device) -> Dict[str, float]:
    """Mean over the validation cases of MAE (HU, whole cube) and MSE on the [0, 1] scale, eval mode."""
    G.eval()
    mae, mse = [], []
    for i in range(len(val_set)):
        batch = collate([val_set[i]], device)
        fake = G(batch["pa"], batch["lateral"]).float()
        mae.append((fake - batch["ct"]).abs().mean().item() * 2500.0)
        mse.append(((fake - batch["ct"]) ** 2).mean().item())
    G.train()
    return {"val/mae_hu": float(np.mean(mae)), "val/mse": float(np.mean(mse))}


@torch.no_grad()
def write_sample(
    G: nn.Module, dataset: X2CTDataset, device: torch.device, out: Path, epoch: int, step: int, scalars: ScalarLog
) -> None:
    """Montage of the first case of ``dataset`` to ``OUT/samples/epoch_XXXX.png`` (and TensorBoard)."""
    from PIL import Image

    G.eval()
    batch = collate([dataset[0]], device)
    fake = G(batch["pa"], batch["lateral"])
    G.train()
    image = montage(batch["pa"], batch["lateral"], batch["ct"], fake)
    target = out / "samples" / f"epoch_{epoch:04d}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    scalars.image("samples/pa_lateral__gt__prediction", image, step)


# -------------------------------------------------------------------------------------------- export


def training_metadata(
    config: TrainConfig, data: Path, train_set: X2CTDataset, seconds: float, steps: int
) -> Dict[str, Any]:
    """Metadata of a trained generator, as :func:`x2ct.models.save_generator` keyword arguments:
    ``input_spec`` (range and preprocessing of the radiographs), ``training_data`` and ``extra.training``."""
    summary = _dataset_summary(data, train_set)
    build = summary["build"]
    input_spec = {
        "range": [0.0, 1.0],
        "size": config.grid_size,
        "normalization": "per-image min-max to 0..255 (uint8), then /255",
        "preprocessing": (
            "DRR radiograph as in the training data: cone-beam ray sums (SAD {sad} mm, SID {sid} mm, {det} mm "
            "detector, {n} px), per-image min-max of the line integral to 0..255 (uint8), resized to {s}x{s} by "
            "linear interpolation (scipy zoom order 1), divided by 255; PA in radiological display (patient right "
            "on image left), lateral columns anterior->posterior, rows superior->inferior"
        ).format(
            sad=build.get("sad_mm"),
            sid=build.get("sid_mm"),
            det=build.get("detector_mm"),
            n=build.get("drr_size"),
            s=config.grid_size,
        ),
        "drr_geometry": {k: build.get(k) for k in ("sad_mm", "sid_mm", "detector_mm", "drr_size")},
    }
    training = {
        "config": config.to_dict(),
        "steps": steps,
        "seconds": round(seconds, 1),
        "device": str(resolve_device(config.device)),
        "threads": torch.get_num_threads(),
        "losses": "0.1 LSGAN (conditional 3D PatchGAN) + 10 MSE + 10 x mean over 3 axes of L1 of mean projections",
        "optimizer": f"Adam lr {config.lr} betas ({config.beta1}, {config.beta2}) for G and D; "
        f"{config.epochs_constant} constant + {config.epochs_decay} linear-decay epochs",
        "x2ct_version": __version__,
        "torch_version": torch.__version__,
    }
    return {"input_spec": input_spec, "training_data": summary, "extra": {"training": training}}


def export_trained(
    G: nn.Module, config: TrainConfig, data: Path, train_set: X2CTDataset, target: Path, seconds: float, steps: int
) -> Path:
    """Export the generator with :func:`x2ct.models.save_generator` into the folder ``target``."""
    from ..models.checkpoints import save_generator

    metadata = training_metadata(config, data, train_set, seconds, steps)
    save_generator(G.to("cpu").eval(), target, **metadata)
    return target
