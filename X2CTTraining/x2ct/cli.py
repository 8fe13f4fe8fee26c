"""The ``x2ct`` command line.

Error contract for every command: a user-caused problem prints one line
``x2ct: error: <file>: <problem>`` to stderr and exits with status 2, with no traceback and no
partial output (every output is written under a temporary name and renamed when complete).

Under ``torchrun`` with several processes (:mod:`x2ct.distributed`) each error line names its rank
(``x2ct: error: rank 1: <file>: <problem>``); a rank whose peer stopped reports that in one line and
exits with status 1; only rank 0 prints a command's summary. Only ``train-generator``,
``train-classifier``, ``synthesize-ct`` and ``predict --manifest`` run as several processes; the
other commands refuse (status 2).

Operating-system errors (permission denied, read-only or full disk, a file where a folder is needed)
are user-side problems too: one line naming the path, status 2. Any other exception is a bug: one
line ``x2ct: error: internal error (<type>: <message>); please report it at <ISSUES_URL> ...``
and status 1; set the environment variable ``X2CT_DEBUG=1`` to see its traceback as well. x2ct's
own warnings print as one line ``x2ct: warning: <file>: <problem>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, TextIO, Type

from . import __version__
from .atomic import exclusive_output
from .errors import InputError
from .userfiles import FAILURES_CSV, all_failed_error, check_output_file, check_output_folder, os_error_line
from .views import LATERAL_KEY, PA_KEY

if TYPE_CHECKING:
    from .drr_geometry import DRRGeometry
    from .inference import GenerationOptions

PROG = "x2ct"
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
SAMPLE = "sample"
"""``--synthetic-from`` value (also its default when given alone) meaning the bundled real CT."""
BOTH_VIEWS = "both"
"""``drr --view`` value meaning the PA and the lateral."""
ISSUES_URL = "https://github.com/SlicerX2CT/SlicerX2CT/issues"
"""Where internal errors are reported (the ``Issues`` URL of X2CTTraining/pyproject.toml)."""
DEBUG_ENV = "X2CT_DEBUG"
"""Environment variable: ``1`` prints the traceback of an internal error after its one line."""


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _print_fields(data: dict) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key:<{width}}  {value}")


def info_dict(path: str, view: Optional[str] = None) -> dict:
    """The ``x2ct info`` record of a radiograph, a CT or another DICOM object (JSON-serialisable).

    A DICOM file that is neither (a segmentation, an MR image, a report, ...) gets ``kind``
    ``"not-radiograph"`` with its ``modality``, ``sop_class`` and a ``description`` line; its pixels are not read.
    """
    from .io import ct_info, read_ct, read_radiograph
    from .io.kind import CT, NOT_RADIOGRAPH, detect_kind, dicom_identity, not_radiograph_reason

    kind = detect_kind(path)
    if kind == CT:
        if view is not None:
            raise InputError(path, "holds a CT volume, not a radiograph (--view applies to radiographs only)")
        return {"kind": "ct", "path": str(path), **ct_info(read_ct(path))}
    if kind == NOT_RADIOGRAPH:
        modality, sop_class = dicom_identity(path)
        description = not_radiograph_reason(modality, sop_class)
        if view is not None:
            raise InputError(path, f"{description} (--view applies to radiographs only)")
        return {
            "kind": NOT_RADIOGRAPH,
            "path": str(path),
            "modality": modality,
            "sop_class_uid": sop_class,
            "description": description,
        }
    radiograph = read_radiograph(path, view=view)
    meta = radiograph.metadata
    return {
        "kind": "radiograph",
        "path": str(path),
        "size": list(radiograph.pixels.shape),
        "stored_size": meta.get("stored_size"),
        "reduction": meta.get("reduction"),
        "spacing_mm": list(radiograph.spacing_mm) if radiograph.spacing_mm else None,
        "view": radiograph.view,
        "photometric": meta.get("photometric"),
        "inverted": meta.get("inverted"),
        "body_part": meta.get("body_part"),
        "transfer_syntax": meta.get("transfer_syntax"),
        "format": meta.get("format"),
        "warnings": list(radiograph.warnings),
    }


def cmd_info(args: argparse.Namespace) -> int:
    data = info_dict(args.file, view=args.view)
    _print_json(data) if args.json else _print_fields(data)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .geometry import canonical_array, to_canonical
    from .io import read_ct, write_volume
    from .io.volume import VOLUME_SUFFIXES, volume_suffix
    from .preview import save_picture, three_plane_picture

    if not volume_suffix(args.output):
        raise InputError(args.output, f"unknown output format; use one of {', '.join(VOLUME_SUFFIXES)}")
    if args.preview and not args.canonical:
        raise InputError(args.preview, "--preview needs --canonical (it draws the canonical grid's central slices)")
    for output in (args.output, args.preview):
        if output:
            check_output_file(output)
    image = read_ct(args.input)
    if args.canonical:
        image = to_canonical(image, size=args.size)
    with contextlib.ExitStack() as locks:
        for output in (args.output, args.preview):
            if output:
                locks.enter_context(exclusive_output(output))
        write_volume(image, args.output)
        print(f"wrote {args.output}")
        if args.preview:
            title = f"{Path(args.input).name} on the canonical {args.size}^3 grid (320 mm cube)"
            save_picture(three_plane_picture(canonical_array(image), title=title), args.preview)
            print(f"wrote {args.preview}")
    return 0


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from .models.checkpoints import convert_checkpoint

    (check_output_file if Path(args.output).suffix == ".safetensors" else check_output_folder)(args.output)
    with exclusive_output(args.output):
        written = convert_checkpoint(args.input, args.output)
    print(f"wrote {written}")
    return 0


def cmd_lesion_check(args: argparse.Namespace) -> int:
    from .evaluate.lesion_check import CLEAR_RISE_HU, LOBES, check_lesions

    results = check_lesions(args.model, args.lobe or tuple(LOBES), args.diameter_mm, args.seed, args.ct, args.labels,
                            args.device)  # fmt: skip
    if args.json:
        _print_json({"results": [r.to_dict() for r in results], "clear_rise_hu": CLEAR_RISE_HU})
        return 0
    for r in results:
        verdict = "shows" if r.shows else ("misplaced" if not r.in_place else "too faint")
        print(f"lobe {r.lobe} ({r.lobe_name}): {r.diameter_mm:g} mm lesion, largest rise {r.distance_mm:.1f} mm "
              f"from its centre, {r.rise_hu:+.0f} HU (real {r.real_rise_hu:+.0f} HU): {verdict}")  # fmt: skip
    print(f"{sum(r.shows for r in results)}/{len(results)} lesions show (in place within one diameter, "
          f"rise >= {CLEAR_RISE_HU:g} HU)")
    return 0


def cmd_migrate_model(args: argparse.Namespace) -> int:
    from .models.metadata import migrate_file

    for path in args.models:
        result = migrate_file(Path(path))
        if not result.migrated:
            print(f"{result.metadata}: already metadata schema 2")
            continue
        note = f"; its prose moved to {result.card}" if result.card else ""
        print(f"{result.metadata}: rewritten as metadata schema 2 (weights untouched){note}")
    return 0


def cmd_drr(args: argparse.Namespace) -> int:
    from .drr import write_drrs
    from .io import read_ct
    from .views import LATERAL, PA

    if args.size < 16 or args.size > 2048:
        raise InputError(None, f"--size {args.size}: choose a detector size between 16 and 2048 pixels")
    geometry = _geometry(args)
    chosen = {PA_KEY: (PA,), LATERAL_KEY: (LATERAL,), BOTH_VIEWS: (PA, LATERAL)}[args.view]
    check_output_folder(args.output)
    ct = read_ct(args.ct)
    with exclusive_output(args.output):
        written = write_drrs(ct, args.output, views=chosen, size=args.size, geometry=geometry, device=args.device)
    for paths in written.values():
        print(f"wrote {paths['png']} and {paths['nrrd']}")
    return 0


def _parse_ratios(text: str) -> tuple:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(None, f"--split {text}: give three fractions like 0.8,0.1,0.1") from None


def cmd_build_dataset(args: argparse.Namespace) -> int:
    from .data.builder import BuildOptions, build_dataset, build_synthetic_dataset
    from .resources import sample_ct_path, sample_labels_path

    geometry = _geometry(args)
    options = BuildOptions(
        size=args.size,
        drr_size=args.drr_size or args.size,
        workers=args.workers,
        seed=args.seed,
        ratios=_parse_ratios(args.split),
        geometry=geometry,
    )
    check_output_folder(args.output)
    if args.synthetic_from is None:
        if args.input is None:
            raise InputError(None, "give INPUT (a folder of CTs or a list file) or --synthetic-from")
        report = build_dataset(args.input, args.output, options)
    else:
        if args.input is not None:
            raise InputError(args.input, "give either INPUT or --synthetic-from, not both")
        sample = args.synthetic_from == SAMPLE
        if not sample and args.labels is None:
            raise InputError(args.synthetic_from, "--labels LABEL_MAP is needed with your own CT")
        ct = sample_ct_path() if sample else Path(args.synthetic_from)
        labels = Path(args.labels) if args.labels else sample_labels_path()
        report = build_synthetic_dataset(ct, labels, args.output, args.cases, options)
    if report.exit_code:
        raise all_failed_error(report.out, len(report.failed))
    print(report.summary())
    return 0


def cmd_simulate_radiographs(args: argparse.Namespace) -> int:
    from .data.clinical_dicom import SimulationOptions, parse_effects, simulate_dataset, simulate_files

    if (args.data is None) == (not args.files):
        raise InputError(None, "give either --data DIR (a built data set) or radiograph files, not both")
    if args.dose_ugy is not None and not 0 < args.dose_ugy <= 1000:
        raise InputError(None, f"--dose-ugy {args.dose_ugy:g}: give a detector air kerma in µGy above 0 (e.g. 2.5)")
    random = "random"
    options = SimulationOptions(
        seed=args.seed,
        modality=None if args.modality == random else args.modality,
        photometric=None if args.photometric == random else args.photometric,
        grid=None if args.grid == random else args.grid == "yes",
        dose_ugy=args.dose_ugy,
        effects=parse_effects(args.effects),
    )
    check_output_folder(args.output)
    if args.data is not None:
        report = simulate_dataset(args.data, args.split, args.output, options)
    else:
        report = simulate_files(args.files, args.output, options)
    print(f"simulated {len(report.written)} cases, skipped {len(report.skipped)} (finished earlier); manifest "
          f"{report.manifest} (x2ct predict --manifest reads it)")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(check_output_folder(args.output), device=args.device)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_manifest, predict_to_folder

    classifiers = () if args.no_classifiers else args.classifier
    options = dict(model=args.model, device=args.device, dicom=args.dicom, force=args.force, classifiers=classifiers,
                   options=_generation(args))  # fmt: skip
    if args.manifest:
        if args.pa or args.lateral:
            raise InputError(args.manifest, "give either --manifest or --pa/--lateral, not both")
        batch = predict_manifest(args.manifest, args.output, view_override=args.view_override, **options)
        failed = batch.count("failed")
        if failed == len(batch.cases):
            if batch.rank == 0:
                raise all_failed_error(args.output, failed)
            return EXIT_USER_ERROR
        if batch.rank == 0:
            failures = f" and {batch.failures_csv}" if batch.failures_csv else ""
            print(
                f"predicted {batch.count('done')}, skipped {batch.count('skipped')} (finished earlier), "
                f"failed {failed}; see {batch.summary_csv}{failures}"
            )
        return 0
    if not args.pa:
        if args.lateral:
            raise InputError(args.lateral, "a lateral radiograph needs a PA radiograph (--pa)")
        raise InputError(None, "give --pa FILE (and optionally --lateral FILE), or --manifest CSV")
    prediction = predict_to_folder(args.output, args.pa, args.lateral, view_override=args.view_override, **options)
    scores = ", ".join(f"{v} ncc {s['ncc']:.3f}" for v, s in prediction.consistency.items())
    print(
        f"wrote {args.output}/ with {prediction.model.name} on {prediction.model.device} "
        f"in {prediction.timings_s['total']:.1f} s; re-projection consistency: {scores}"
    )
    ood = prediction.ood
    if ood is not None:
        threshold = "uncalibrated" if ood.threshold is None else f"threshold {ood.threshold:.2f}"
        verdict = "OUT OF DISTRIBUTION (inputs unlike the model's training radiographs)" if ood.flagged else "in range"
        print(f"  out-of-distribution score {ood.score:.2f} ({threshold}): {verdict}")
    for f in prediction.findings:
        print(f"  {f.label}: {f.probability:.2f} (threshold {f.threshold:.2f}) {f.call}")
    return 0


def _report_training(result: Any, what: str = "model") -> int:
    """Exit status 0 after a training run, with one line from rank 0: the steps, minutes and where the model is,
    or how to continue a run that stopped early (``max_steps``)."""
    if result.rank != 0:
        return 0
    if result.finished:
        print(f"trained {result.global_step} steps in {result.seconds / 60:.1f} min; {what} in {result.model_dir}")
    else:
        print(f"stopped at step {result.global_step}; run the same command again to continue")
    return 0


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from .train.diffusion import load_diffusion_config, train_diffusion

    config = load_diffusion_config(args.config, overrides(args, stage=args.stage, vae=args.vae, init=args.init),
                                   args.preset)  # fmt: skip
    if config.out:
        check_output_folder(config.out)
    return _report_training(train_diffusion(config))


def cmd_train_generator(args: argparse.Namespace) -> int:
    from .train import load_config, train_generator

    config = load_config(args.config, overrides(args, shape_induction=args.shape_induction))
    if config.out:
        check_output_folder(config.out)
    return _report_training(train_generator(config))


def cmd_train_style(args: argparse.Namespace) -> int:
    from .train.style import load_config, train_style

    config = load_config(args.config, overrides(args, real=args.real, drr=args.drr))
    if config.out:
        check_output_folder(config.out)
    return _report_training(train_style(config), "style model")


def cmd_calibrate_ood(args: argparse.Namespace) -> int:
    from .inference.ood_calibration import calibrate, summary_line

    print(summary_line(calibrate(args.model, args.data, args.simulated, args.percentile)))
    return 0


def cmd_evaluate_generator(args: argparse.Namespace) -> int:
    from .evaluate.generator import EvaluationExtras, evaluate_generator, headline, lesion_headline

    check_output_folder(args.output)
    extras = EvaluationExtras(
        frechet_classifier=args.frechet_classifier, samples=args.samples, guidance=args.guidance,
        sampler_steps=args.sampler_steps, seed=0 if args.seed is None else args.seed,
    )  # fmt: skip
    csv_path, json_path, document = evaluate_generator(
        args.model, args.data, args.output, args.split, args.device, extras=extras
    )
    print(headline(document))
    lesions = lesion_headline(document)
    if lesions is not None:
        print(lesions)
    if "frechet" in document:
        fd = document["frechet"]
        bias = " (fewer cases than dimensions: biased; compare at equal case counts only)" if fd["biased"] else ""
        print(f"Fréchet distance {fd['distance']:.4g} ({fd['n_real']} cases, {fd['dims']} features){bias}")
    if "uncertainty" in document:
        print(document["uncertainty"]["headline"])
    print(f"wrote {csv_path} and {json_path}")
    return 0


def cmd_synthesize_ct(args: argparse.Namespace) -> int:
    from .inference import synthesize_ct

    report = synthesize_ct(args.model, args.data, args.output, args.split, args.device, args.batch_size)
    if report.failed and not (report.written or report.skipped):
        if report.rank == 0:
            raise all_failed_error(report.out, len(report.failed))
        return EXIT_USER_ERROR
    if report.rank != 0:
        return 0
    for note in report.warnings:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    failed = f", failed {len(report.failed)} (see {report.out / FAILURES_CSV})" if report.failed else ""
    print(
        f"synthesized {len(report.written)} CTs with {report.model}, skipped {len(report.skipped)} (finished "
        f"earlier){failed}; manifest {report.manifest}"
    )
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from .classify.config import load_config
    from .classify.train import train_classifier

    shorthands = dict(task=args.task, arch=args.arch, inputs=args.inputs, ct_source=args.ct_source,
                      labels=args.labels, threads=args.threads)  # fmt: skip
    config = load_config(args.config, overrides(args, **shorthands))
    if args.vae is not None:  # latent-densenet3d: the latent diffusion model whose VAE encodes the CTs
        from dataclasses import replace

        config = replace(config, arch_options={**config.arch_options, "vae": args.vae})
    if config.out:
        check_output_folder(config.out)
    result = train_classifier(config, resume=args.resume)
    if result.rank != 0:
        return 0
    if result.finished:
        thresholds = ", ".join(f"{c} {t:.3f}" for c, t in result.thresholds.items())
        print(
            f"trained {result.global_step} steps; selected epoch {result.best_epoch} (validation mean AUC "
            f"{result.best_mean_auc:.3f}); thresholds {thresholds}; model in {result.model_dir}"
        )
    else:
        print(f"stopped at step {result.global_step}; run the same command with --resume to continue")
    return 0


def cmd_evaluate_classifier(args: argparse.Namespace) -> int:
    from .classify.evaluate import evaluate_classifier, headline

    check_output_folder(args.output)
    document = evaluate_classifier(
        args.model,
        args.data,
        args.output,
        split=args.split,
        labels=args.labels,
        ct_source=args.ct_source,
        device=args.device,
        compare=args.compare,
        cam_hit_rate=args.cam_hit_rate,
    )
    print(headline(document))
    for column, record in ((document.get("comparison") or {}).get("outputs") or {}).items():
        if "p_value" in record:
            difference, p_value = record["difference"], record["p_value"]
            print(f"{column} vs {args.compare}: AUC difference {difference:+.3f}, p = {p_value:.3g}")
    for column, record in ((document.get("cam_hit_rate") or {}).get("outputs") or {}).items():
        top = record["headline"]
        if top is not None:
            rates = ", ".join(f"{m} {top[m]['hit_rate']:.2f}" for m in ("grad_cam", "guided_grad_cam"))
            print(f"{column} CAM hit rate ({top['input']} map, {top['grad_cam']['n']} positive cases): {rates}")
    print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------------------------------
# Options shared by several commands, each declared once as a parent parser


DEVICES = ("auto", "cpu", "cuda")
"""``--device`` choices of the commands that run models."""


def device_option(default: Optional[str]) -> argparse.ArgumentParser:
    """The ``--device`` option. ``default`` "auto" (CUDA if present): inference and evaluation; None: the training
    commands, whose config file holds the default; "cpu": ``drr``, which also takes ``cuda:N``
    (:func:`x2ct.drr.resolve_device`) and so lists no choices."""
    parent = argparse.ArgumentParser(add_help=False)
    if default is None:
        parent.add_argument("--device", choices=DEVICES, help="= --set device=... (config default: auto)")
    elif default == "auto":
        parent.add_argument("--device", choices=DEVICES, default=default, help="default auto (CUDA if present)")
    else:
        parent.add_argument("--device", default=default, help=f"cpu, cuda or auto (default {default})")
    return parent


def sampling_options() -> argparse.ArgumentParser:
    """The sampling options of stochastic (diffusion) generators (``predict``, ``evaluate-generator``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--samples",
        type=int,
        metavar="K",
        help="stochastic generators: samples per case; the CT is their mean and their per-voxel SD the uncertainty "
        "(predict: default 8, written as uncertainty_sd_hu.nrrd; an error for deterministic generators unless 1. "
        "evaluate-generator: K >= 2, scored in OUT/uncertainty.json, docs/uncertainty.md)",
    )
    parent.add_argument("--sampler-steps", type=int, metavar="N", help="stochastic generators: sampler steps "
                        "(default: the model's)")  # fmt: skip
    parent.add_argument(
        "--guidance",
        type=float,
        metavar="W",
        help="stochastic generators: weight of the radiograph-consistency guidance of each sampling step "
        "(default 0 = none; guidance is several times slower)",
    )
    parent.add_argument("--seed", type=int, metavar="S", help="stochastic generators: sampler seed (default 0)")
    return parent


def generation_options() -> argparse.ArgumentParser:
    """``--style`` and :func:`sampling_options`, read by :func:`_generation` into
    :class:`x2ct.inference.GenerationOptions` (``predict``, also with ``--manifest``)."""
    parent = argparse.ArgumentParser(add_help=False, parents=[sampling_options()])
    parent.add_argument(
        "--style",
        metavar="NAME|PATH",
        help="translate each radiograph to DRR style with this CycleGAN style model (bundled name or path) "
        "before the generator; recorded in summary.json",
    )
    return parent


def _generation(args: argparse.Namespace) -> GenerationOptions:
    """The :class:`x2ct.inference.GenerationOptions` of :func:`generation_options` (InputError when out of range)."""
    from .inference import GenerationOptions

    return GenerationOptions(
        style=args.style, samples=args.samples, sampler_steps=args.sampler_steps, guidance=args.guidance,
        seed=args.seed,
    )  # fmt: skip


def geometry_options() -> argparse.ArgumentParser:
    """``--sad``, ``--sid`` and ``--detector-mm`` (mm), defaulting to :class:`x2ct.drr.DRRGeometry`'s (official
    X2CT-GAN) geometry."""
    from .drr_geometry import DRRGeometry

    parent = argparse.ArgumentParser(add_help=False)
    for flag, name, what in (
        ("--sad", "sad_mm", "source-isocentre distance"),
        ("--sid", "sid_mm", "source-detector distance"),
        ("--detector-mm", "detector_mm", "detector edge"),
    ):
        default = float(getattr(DRRGeometry, name))
        parent.add_argument(flag, type=float, default=default, help=f"{what} in mm (default {default:g})")
    return parent


def settings_options(default_config: str) -> argparse.ArgumentParser:
    """The options of the training commands' settings: ``--config FILE`` (default ``default_config``), ``--set
    KEY=VALUE`` (repeatable), and the shorthands ``--data DIR`` and ``-o RUN`` (= ``--set data=`` / ``out=``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", help=f"JSON config file (default: {default_config})")
    parent.add_argument("--data", metavar="DIR", help="data set built by 'x2ct build-dataset' (= --set data=DIR)")
    parent.add_argument(
        "-o", "--output", metavar="RUN", help="run folder: checkpoints, logs, final model (= --set out=RUN)"
    )
    parent.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    return parent


def overrides(args: argparse.Namespace, **shorthands: Any) -> List[str]:
    """``--set`` items followed by the shorthand options given (``data``, ``out`` and the command's own), as
    ``KEY=VALUE`` (later items win)."""
    named = {"data": getattr(args, "data", None), "out": args.output, "device": args.device, **shorthands}
    return [*(args.set or []), *(f"{key}={value}" for key, value in named.items() if value is not None)]


def data_options(split: str) -> argparse.ArgumentParser:
    """``--data DIR`` (required) and ``--split`` of the commands that read a built data set (default ``split``)."""
    from .data.layout import SPLIT_CHOICES

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data", metavar="DIR", required=True, help="data set built by 'x2ct build-dataset'")
    parent.add_argument("--split", default=split, choices=SPLIT_CHOICES, help=f"default {split}")
    return parent


def _geometry(args: argparse.Namespace) -> DRRGeometry:
    """The :class:`x2ct.drr.DRRGeometry` of ``--sad/--sid/--detector-mm`` (InputError when impossible)."""
    from .drr_geometry import DRRGeometry

    try:
        return DRRGeometry(sad_mm=args.sad, sid_mm=args.sid, detector_mm=args.detector_mm)
    except ValueError as err:
        raise InputError(None, f"--sad/--sid/--detector-mm: {err}") from None


# --------------------------------------------------------------------------------------------------
# The sub-commands' options


Commands = argparse._SubParsersAction
"""What ``add_subparsers`` returns: each ``add_<command>`` function adds its sub-command to it."""


def add_info(sub: Commands) -> None:
    p = sub.add_parser("info", help="describe a chest radiograph or CT (DICOM, PNG/JPEG/TIFF, NIfTI, NRRD, MHA)")
    p.add_argument("file", help="radiograph file, CT file, or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--view", help="override the radiograph view (PA, AP, LATERAL)")
    p.set_defaults(func=cmd_info)


def add_convert(sub: Commands) -> None:
    p = sub.add_parser("convert", help="convert a CT between formats, optionally onto the canonical 320 mm grid")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("output", help="output .nrrd, .nii, .nii.gz or .mha")
    p.add_argument("--canonical", action="store_true", help="resample onto the canonical body-centred 320 mm cube")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256), help="canonical grid size (default 128)")
    p.add_argument("--preview", metavar="PNG", help="with --canonical: also draw axial/coronal/sagittal slices")
    p.set_defaults(func=cmd_convert)


def add_convert_checkpoint(sub: Commands) -> None:
    p = sub.add_parser(
        "convert-checkpoint", help="convert an official X2CT-GAN .pth (loaded with weights_only) to safetensors + JSON"
    )
    p.add_argument("input", help="official *_net_G.pth (a dict with state_dict) or one of ours")
    p.add_argument("output", help="OUT.safetensors (JSON written beside it) or a folder")
    p.set_defaults(func=cmd_convert_checkpoint)


def add_lesion_check(sub: Commands) -> None:
    p = sub.add_parser(
        "lesion-check",
        help="paint a solid lesion into a lung lobe, render DRRs and see whether a generator's CT shows it",
        description="For each lobe: a solid sphere (default 25 mm, 40 HU) painted into the bundled chest CT (or "
        "--ct with --labels), PA and lateral DRRs rendered as the data-set builder renders them, the generator run "
        "with and without the lesion; reports where the synthetic CT rises most (distance to the painted centre) "
        "and by how many HU. See docs/generator_comparison.md.",
        parents=[device_option("auto")],
    )
    p.add_argument("--model", metavar="NAME|PATH", required=True, help="generator: bundled name or model folder")
    p.add_argument("--lobe", type=int, action="append", metavar="ID",
                   help="TotalSegmentator lobe id, repeatable: 10 left upper, 11 left lower, 12 right upper, "
                   "13 right middle, 14 right lower (default: all five)")  # fmt: skip
    p.add_argument("--diameter-mm", type=float, default=25.0, help="lesion diameter in mm (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lesion positions (default 0)")
    p.add_argument("--ct", metavar="CT", help="your own CT instead of the bundled one (needs --labels)")
    p.add_argument("--labels", metavar="LABELS", help="its TotalSegmentator-style label map")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_lesion_check)


def add_migrate_model(sub: Commands) -> None:
    p = sub.add_parser(
        "migrate-model",
        help="rewrite a model's schema-1 model.json as metadata schema 2 (weights untouched)",
        description="x2ct reads both metadata schemas; this rewrites the old one in place, moving its prose "
        "fields (descriptions, rules in words) into the model card. Models already on schema 2 are left alone.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folder, or its .json / .safetensors")
    p.set_defaults(func=cmd_migrate_model)


def add_drr(sub: Commands) -> None:
    p = sub.add_parser(
        "drr",
        help="render digitally reconstructed radiographs (PA, lateral) of a CT",
        parents=[geometry_options(), device_option("cpu")],
    )
    p.add_argument("ct", help="CT file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder for pa/lateral .png (16-bit) and .nrrd")
    p.add_argument(
        "--view", choices=(PA_KEY, LATERAL_KEY, BOTH_VIEWS), default=BOTH_VIEWS, help="which views (default both)"
    )
    p.add_argument("--size", type=int, default=128, help="detector pixels per side (default 128)")
    p.set_defaults(func=cmd_drr)


def add_build_dataset(sub: Commands) -> None:
    p = sub.add_parser(
        "build-dataset",
        help="build paired CT / PA / lateral DRR HDF5 files (official layout) and a split manifest",
        description="Build OUT/<case>/ct_xray_data.h5 for every CT of INPUT (a folder: each CT file or DICOM "
        "series subfolder is a case; or a UTF-8 .txt/.csv list, one path per line, relative paths from the list "
        "file's folder), or a labelled synthetic benchmark from one CT with --synthetic-from. Finished cases are "
        "skipped; a failing case is reported, listed in OUT/failures.csv, and the rest build. Exit status 0 when at "
        "least one case is finished, 2 when every case failed (OUT then holds only failures.csv, no manifest) or on "
        "a usage error.",
        parents=[geometry_options()],
    )
    p.add_argument("input", nargs="?", help="folder of CTs, or a .txt/.csv list of CT paths")
    p.add_argument("output", metavar="OUT", help="output folder (created; resumable)")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256), help="canonical grid size (default 128)")
    p.add_argument("--drr-size", type=int, help="DRR pixels per side (default: --size)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; same results as 1)")
    p.add_argument("--seed", type=int, default=0, help="split salt and synthetic generator seed (default 0)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument(
        "--synthetic-from",
        nargs="?",
        const=SAMPLE,
        metavar="CT",
        help=f"build a synthetic labelled benchmark from one CT ('{SAMPLE}' or nothing: the bundled chest CT)",
    )
    p.add_argument("--labels", help="label map of the --synthetic-from CT (default: the bundled one's)")
    p.add_argument("--cases", type=int, default=10, help="number of synthetic cases (default 10)")
    p.set_defaults(func=cmd_build_dataset)


def add_simulate_radiographs(sub: Commands) -> None:
    from .data.layout import SPLIT_CHOICES

    p = sub.add_parser(
        "simulate-radiographs",
        help="simulated clinical CR/DX radiographs (DICOM) of a data set's DRRs: scatter, noise, processing, ...",
        description="Run the clinical-radiograph simulator (docs/clinical_simulator.md) on the DRRs of a built data "
        "set (xray1 = PA, xray2 = lateral) or on radiograph files, and write OUT/<case_id>/pa.dcm (+ lateral.dcm), "
        "OUT/<case_id>/params.json and OUT/manifest.csv (case_id,pa,lateral), which x2ct predict --manifest reads. "
        "Every image is marked SYNTHETIC. Seeded: the same options give the same files; finished cases are skipped.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="radiograph/DRR files instead of --data (each a case)")
    p.add_argument("--data", metavar="DIR", help="data set built by 'x2ct build-dataset'")
    p.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="with --data (default test)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (resumable)")
    p.add_argument("--seed", type=int, default=0, help="seed of every parameter and of the noise (default 0)")
    p.add_argument("--modality", choices=("CR", "DX", "random"), default="random", help="default random per case")
    p.add_argument("--photometric", choices=("MONOCHROME1", "MONOCHROME2", "random"), default="random",
                   help="MONOCHROME1 stores dense structures dark (default random per case)")  # fmt: skip
    p.add_argument("--grid", choices=("yes", "no", "random"), default="random", help="anti-scatter grid")
    p.add_argument("--dose-ugy", type=float, metavar="X", help="detector air kerma in µGy (default drawn, 1-10)")
    p.add_argument("--effects", default="all", metavar="LIST",
                   help="comma list of pose, marker, heel, scatter, noise, mtf, usm, lut, collimation; all "
                   "(default) or none")  # fmt: skip
    p.set_defaults(func=cmd_simulate_radiographs)


def add_predict(sub: Commands) -> None:
    p = sub.add_parser(
        "predict",
        help="synthetic CT from a PA (and optionally a lateral) chest radiograph",
        description="Write DIR/synthetic_ct.nrrd (HU, canonical 320 mm grid, LPS), summary.json and report.png "
        "(plus DIR/dicom/ with --dicom), all marked SYNTHETIC; research use only, not for diagnosis. With only "
        "--pa a single-view model is used. --manifest CSV (UTF-8; columns pa, lateral, case_id; paths relative to "
        "the CSV's folder) predicts every case into DIR/<case_id>/, skips finished cases and carries on past failing "
        "ones, listed in DIR/failures.csv (exit 0 when at least one case is finished; when every case failed, exit 2 "
        "and DIR holds only failures.csv); under torchrun the cases are shared among the processes. --style applies "
        "a CycleGAN style model to the inputs first; a stochastic (diffusion) generator is sampled --samples times "
        "and also writes DIR/uncertainty_sd_hu.nrrd (per-voxel SD, HU, on the CT's grid).",
        parents=[device_option("auto"), generation_options()],
    )
    p.add_argument("--pa", metavar="FILE", help="frontal (PA) radiograph: DICOM, PNG, JPEG, TIFF, NRRD, MHA")
    p.add_argument("--lateral", metavar="FILE", help="lateral radiograph (needs --pa; selects a biplanar model)")
    p.add_argument("--manifest", metavar="CSV", help="batch: a CSV with columns pa, lateral (optional), case_id")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="output folder (batch: root folder)")
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="bundled model name, official .pth or x2ct model "
        "(default: x2ct-demo-biplanar with a lateral, x2ct-demo-singleview without)",
    )
    p.add_argument("--dicom", action="store_true", help="also write a DICOM CT series marked synthetic")
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when a DICOM is not a chest radiograph by its Modality, SOP class or BodyPartExamined",
    )
    p.add_argument("--view-override", action="store_true", help="trust --pa/--lateral over the files' view tags")
    p.add_argument(
        "--classifier",
        action="append",
        metavar="NAME|PATH",
        help="disease classifier to run (repeatable; default: every bundled classifier); writes findings.json "
        "and gradcam/",
    )
    p.add_argument("--no-classifiers", action="store_true", help="synthetic CT only: no findings, no Grad-CAM")
    p.set_defaults(func=cmd_predict)


def add_train_diffusion(sub: Commands) -> None:
    p = sub.add_parser(
        "train-diffusion",
        help="train the latent diffusion generator (stages vae -> ldm -> lora); resumable",
        description="Train one stage of the X-ray2CTPA-style latent diffusion generator: the per-slice VAE (vae), "
        "the conditional 3D latent denoiser with the VAE frozen (ldm, needs --vae), or LoRA adapters on a trained "
        "denoiser (lora, needs --init). Settings: x2ct/train/diffusion_default.json, a --preset or --config file, "
        "then --set KEY=VALUE; see docs/latent_diffusion.md. Running again with the same -o resumes with identical "
        "results.",
        parents=[settings_options("x2ct/train/diffusion_default.json"), device_option(None)],
    )
    p.add_argument("--stage", choices=("vae", "ldm", "lora"), help="= --set stage=... (default vae)")
    p.add_argument("--vae", metavar="RUN_OR_MODEL", help="stage ldm: the trained VAE (a vae run folder or its model)")
    p.add_argument("--init", metavar="MODEL", help="stage lora: the trained latent diffusion model (run or model)")
    p.add_argument("--preset", metavar="NAME", help="named settings: tiny (tests), demo (64³, the seed's design), "
                   "demo_fast (demo + x0 prediction + back-projection prior: the bundled demo), seed (X-ray2CTPA "
                   "sizes); instead of --config")  # fmt: skip
    p.set_defaults(func=cmd_train_diffusion)


def add_train_generator(sub: Commands) -> None:
    p = sub.add_parser(
        "train-generator",
        help="train an X2CT-GAN generator (+B or +S) on a built data set; resumable",
        description="Train with the official X2CT-GAN losses and schedule. Every setting comes from the config "
        "file (default: the official settings, x2ct/train/generator_default.json) and --set KEY=VALUE overrides; "
        "see docs/training.md. Running again with the same -o resumes from OUT/checkpoints/last.pt with "
        "identical results.",
        parents=[settings_options("the official settings"), device_option(None)],
    )
    p.add_argument(
        "--shape-induction",
        metavar="DIR",
        help="also fine-tune on the radiographs without CT in DIR (PA; PA + lateral for views=2; manifest.csv or "
        "every radiograph file) by shape induction (= --set shape_induction=DIR; docs/shape_induction.md). "
        "For a short fine-tune add --set shape_mode=joint: every step then also trains on the paired data, "
        "which holds the HU level (the default, the paper's alternation, starts with 90 radiograph-only epochs)",
    )
    p.set_defaults(func=cmd_train_generator)


def add_train_style(sub: Commands) -> None:
    p = sub.add_parser(
        "train-style",
        help="train a CycleGAN style model (real radiographs -> DRR look) on two unpaired folders; resumable",
        description="Train a CycleGAN (ResNet or U-Net generators, PatchGAN, LSGAN, cycle lambda 10, NAdam, an EMA "
        "of the real -> DRR generator) on unpaired folders of real radiographs and DRRs, pooling PA and lateral "
        "images. Every setting comes from the config file (default x2ct/train/style_default.json) and --set "
        "KEY=VALUE; see docs/style_transfer.md. Running again with the same -o resumes from RUN/checkpoints/last.pt "
        "with identical results. The model (RUN/model) is used with x2ct predict --style RUN/model.",
        parents=[device_option(None)],
    )
    p.add_argument("--real", metavar="DIR", help="folder of real (clinical) radiographs (= --set real=DIR)")
    p.add_argument("--drr", metavar="DIR", help="folder of DRRs like the generators' training inputs (= --set drr=DIR)")
    p.add_argument("-o", "--output", metavar="RUN", help="run folder: checkpoints, logs, the style model")
    p.add_argument("--config", metavar="FILE", help="JSON config file (default: x2ct/train/style_default.json)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.set_defaults(func=cmd_train_style)


def add_calibrate_ood(sub: Commands) -> None:
    p = sub.add_parser(
        "calibrate-ood",
        help="the out-of-distribution reference of a generator: training-DRR statistics and a threshold",
        description="Compute the image statistics of the training split's DRRs of a built data set (the generator's "
        "training domain), set the threshold at the 99th percentile of the held-out (val + test) DRR scores, report "
        "the cross-fitted false-alarm rate and, with --simulated, the detection rate on simulated clinical "
        "radiographs; write ood_reference.json into the model folder, where x2ct predict finds it (docs/ood.md).",
    )
    p.add_argument("--model", metavar="NAME|PATH", required=True, help="bundled model name or x2ct model folder")
    p.add_argument(
        "--data",
        metavar="DIR",
        required=True,
        action="append",
        help="a data set of the model's training cases (its splits); repeatable, e.g. the same cases at two DRR sizes",
    )
    p.add_argument("--simulated", metavar="DIR", help="radiographs without CT, e.g. x2ct simulate-radiographs output")
    p.add_argument("--percentile", type=float, default=99.0, help="threshold percentile of held-out DRRs (99)")
    p.set_defaults(func=cmd_calibrate_ood)


def add_evaluate_generator(sub: Commands) -> None:
    p = sub.add_parser(
        "evaluate-generator",
        help="score a generator on a data-set split under the declared metric protocol",
        description="Run the generator on every case of the split (the case's stored DRRs as input) and compare "
        "with its CT under docs/metric_protocol.md. Writes OUT/metrics_per_case.csv and OUT/metrics_summary.json.",
        parents=[data_options("test"), device_option("auto"), sampling_options()],
    )
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        required=True,
        help="bundled model name, official .pth, x2ct model folder, or a train-generator run/checkpoint",
    )
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder for the CSV and JSON")
    p.add_argument(
        "--frechet-classifier",
        metavar="MODEL",
        help="a CT classifier (x2ct train-classifier RUN/model; one that sees the whole volume, e.g. cnn3d): adds "
        "the Fréchet distance of real vs synthetic CTs in its penultimate features to the summary",
    )
    p.set_defaults(func=cmd_evaluate_generator)


def add_synthesize_ct(sub: Commands) -> None:
    p = sub.add_parser(
        "synthesize-ct",
        help="a generator's synthetic CT of every case of a built data set (a CT source for classifiers)",
        description="Run a generator on each case's stored DRRs (xray1 = PA, xray2 = lateral) and write "
        "OUT/<case_id>/synthetic_ct.nrrd (HU, canonical grid, as x2ct predict writes it) and OUT/manifest.csv. "
        "Finished cases are skipped; a folder made with other weights is refused; a case whose file cannot be read "
        "is listed in OUT/failures.csv and the rest go on (when every case failed, exit 2 and OUT holds only "
        "failures.csv). Under torchrun the cases are shared among the processes.",
        parents=[data_options("all"), device_option("auto")],
    )
    p.add_argument(
        "--model", metavar="NAME|PATH", required=True, help="bundled generator name, official .pth or x2ct model folder"
    )
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (resumable)")
    p.add_argument("--batch-size", type=int, default=4, help="cases per generator call (default 4)")
    p.set_defaults(func=cmd_synthesize_ct)


def add_train_classifier(sub: Commands) -> None:
    from .classify.tasks import TASKS

    p = sub.add_parser(
        "train-classifier",
        help="train a disease classifier (TB, TB type, TB activity, PE) on radiographs, CT or both; resumable",
        description="Train with BCE (class weights), Adam and model selection on validation (mean AUC); the "
        "thresholds are chosen on validation (Youden) and frozen into RUN/model. Every setting comes from the "
        "config file (default x2ct/train/classifier_default.json) and --set KEY=VALUE; see docs/classifiers.md. "
        "--resume continues an interrupted run with identical results. Needs the eval extra (scikit-learn).",
        parents=[settings_options("x2ct/train/classifier_default.json"), device_option(None)],
    )
    p.add_argument("--task", choices=tuple(TASKS), help="= --set task=... (default tb)")
    p.add_argument(
        "--arch",
        metavar="ARCH",
        help="densenet2d, hemis-densenet2d, cnn3d, cnn3d-2slice, densenet3d, "
        "concat-cnn3d, concat-cnn3d-2slice, late-fusion or latent-densenet3d (= --set arch=...)",
    )
    p.add_argument(
        "--vae",
        metavar="MODEL",
        help="latent-densenet3d: the latent diffusion model (bundled name or folder) whose frozen VAE encodes the "
        "CTs; named with its sha256 in the classifier (= arch_options vae)",
    )
    p.add_argument("--inputs", metavar="KEYS", help="comma list of pa, lateral, ct (default: what the arch reads)")
    p.add_argument(
        "--ct-source",
        metavar="real|DIR",
        help="real (the data set's CT, default) or a folder written by x2ct synthesize-ct / x2ct predict --manifest",
    )
    p.add_argument("--labels", metavar="CSV", help="label file (default DATA/manifest.csv)")
    p.add_argument("--threads", type=int, help="torch CPU threads (= --set threads=N; 0 = torch's default)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    p.set_defaults(func=cmd_train_classifier)


def add_evaluate_classifier(sub: Commands) -> None:
    p = sub.add_parser(
        "evaluate-classifier",
        help="score a classifier on a split: DeLong AUC, frozen threshold, Wilson CIs, ROC, comparison, CAM hit rate",
        description="Writes OUT/predictions.csv, OUT/metrics.json and OUT/roc.png. The threshold is the one frozen "
        "in the model (chosen on validation). Needs the eval extra: pip install 'x2ct[eval]'.",
        parents=[data_options("test"), device_option("auto")],
    )
    p.add_argument("--model", metavar="PATH", required=True, help="RUN/model (or the training run folder RUN)")
    p.add_argument("--labels", metavar="CSV", help="label file (default DATA/manifest.csv)")
    p.add_argument("--ct-source", metavar="real|DIR", help="CT source (default: the one the model was trained on)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder")
    p.add_argument("--compare", metavar="OTHER_EVAL", help="another evaluation folder on the same cases: DeLong test")
    p.add_argument(
        "--cam-hit-rate",
        action="store_true",
        help="Grad-CAM peak inside the lesion masks for positive cases (data sets with lesion masks)",
    )
    p.set_defaults(func=cmd_evaluate_classifier)


def add_demo(sub: Commands) -> None:
    p = sub.add_parser(
        "demo",
        help="the demo: x2ct predict on the bundled sample radiographs with the demo models",
        parents=[device_option("auto")],
    )
    p.add_argument("-o", "--output", default="x2ct-demo", help="output folder (default ./x2ct-demo)")
    p.set_defaults(func=cmd_demo)


def add_reader_study(sub: Commands) -> None:
    p = sub.add_parser(
        "reader-study",
        help="blinded reader studies of real vs synthetic CT: build a study folder, analyse the readers' answers",
        description="See docs/reader_study.md. Readers read the study in Slicer's X2CTReaderStudy module.",
    )
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    build = steps.add_parser(
        "build",
        help="case list -> a blinded, self-contained study folder",
        description="Generate each case's synthetic CT and write a blinded study folder OUT (new or empty): "
        "study.json, items.json, volumes/ and radiographs/ under opaque ids, readers/<id>/order.json, and "
        "coordinator/key.json (truth; keep it from readers). CASES.csv (UTF-8; paths relative to its folder) has the "
        "columns pa (frontal radiograph: DICOM, PNG, JPEG, TIFF, NRRD, MHA), truth (1 disease present, 0 absent) "
        "and, optional, lateral (lateral radiograph; selects a biplanar model), ct (the real CT, a file or a DICOM "
        "series folder; needed for the real-vs-synthetic task) and case_id (your label, kept only in "
        "coordinator/key.json; never a patient identifier). See docs/reader_study.md.",
        parents=[device_option("auto")],
    )
    build.add_argument("cases", metavar="CASES.csv", help="case list: pa, truth, lateral, ct, case_id")
    build.add_argument("out", metavar="OUT", help="the study folder to write (new or empty)")
    build.add_argument("--definition", metavar="FILE.json", help="start from this study definition (study.json)")
    build.add_argument("--name", help="study name shown to readers")
    build.add_argument("--disease", help="what the diagnosis task asks about, e.g. 'pulmonary embolism'")
    build.add_argument("--tasks", metavar="LIST", help="comma list of real_vs_synthetic, diagnosis (default both)")
    build.add_argument("--design", choices=("sequential", "independent"), help="diagnosis design (default sequential)")
    build.add_argument("--confidence-scale", choices=("1-5", "0-100"), help="real-vs-synthetic confidence scale")
    build.add_argument("--allow-back", action="store_const", const=True, help="readers may go back to locked answers")
    build.add_argument("--washout-days", type=int, metavar="DAYS", help="days between sessions (default 28)")
    build.add_argument("--seed", type=int, help="study seed: counterbalancing and reader orders (default 0)")
    build.add_argument("--readers", metavar="R1,R2", help="reader ids to write orders for (others get one in Slicer)")
    build.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="generator (default: x2ct-demo-biplanar with a lateral, x2ct-demo-singleview without)",
    )
    build.set_defaults(func=cmd_reader_study_build)
    analyze = steps.add_parser("analyze", help="a study folder (or a long-format scores CSV) -> statistics and report")
    analyze.add_argument("study", metavar="STUDY|SCORES.csv", help="folder, or CSV reader,modality,case,truth,score")
    analyze.add_argument("-o", "--output", metavar="REPORT", required=True, help="report folder")
    analyze.set_defaults(func=cmd_reader_study_analyze)


def cmd_reader_study_build(args: argparse.Namespace) -> int:
    from .readerstudy.build import run_build

    return run_build(args)


def cmd_reader_study_analyze(args: argparse.Namespace) -> int:
    from .readerstudy.analyze import run_analyze

    return run_analyze(args)


COMMANDS: Sequence[Callable[[Commands], None]] = (
    add_info,
    add_convert,
    add_convert_checkpoint,
    add_migrate_model,
    add_drr,
    add_build_dataset,
    add_simulate_radiographs,
    add_predict,
    add_train_generator,
    add_train_diffusion,
    add_train_style,
    add_evaluate_generator,
    add_calibrate_ood,
    add_lesion_check,
    add_synthesize_ct,
    add_train_classifier,
    add_evaluate_classifier,
    add_demo,
    add_reader_study,
)
"""Every sub-command, in the order ``x2ct --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chest radiographs to synthetic chest CT. Research use only; not for diagnosis.",
        epilog=f"A problem with your input prints one line and exits with status 2. An internal error prints one "
        f"line asking you to report it at {ISSUES_URL} and exits with status 1; set {DEBUG_ENV}=1 to see its "
        "traceback.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# --------------------------------------------------------------------------------------------------
# Running a command


DISTRIBUTED_COMMANDS = ("train-generator", "train-diffusion", "train-classifier", "synthesize-ct")
"""Commands that share their work among the processes of ``torchrun`` (and ``predict --manifest``)."""


def runs_distributed(args: argparse.Namespace) -> bool:
    """Whether the chosen command can run as several processes under ``torchrun``."""
    if args.command == "predict":
        return args.manifest is not None
    return args.command in DISTRIBUTED_COMMANDS


def _rank_prefix() -> str:
    """``"rank R: "`` under ``torchrun`` with several processes (x2ct.distributed), else nothing."""
    from .distributed import ENV_RANK, requested_world_size

    return f"rank {os.environ.get(ENV_RANK, '?')}: " if requested_world_size() > 1 else ""


def _error(message: str, status: int = EXIT_USER_ERROR) -> int:
    """Print the one error line (``x2ct: error: [rank R: ]<message>``) and return ``status``."""
    print(f"{PROG}: error: {_rank_prefix()}{message}", file=sys.stderr)
    return status


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``x2ct`` console script; returns the exit status."""
    from .distributed import PeerFailure, requested_world_size

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    if requested_world_size() > 1 and not runs_distributed(args):
        what = "predict without --manifest" if args.command == "predict" else args.command
        return _error(f"{what} runs in one process; start it without torchrun (or with --nproc_per_node 1)")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return args.func(args)
    except InputError as err:
        return _error(str(err))
    except PeerFailure as err:
        return _error(str(err), EXIT_FAILURE)
    except OSError as err:
        return _error(os_error_line(err))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line asking for a report; the traceback with X2CT_DEBUG=1
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        return _error(
            f"internal error ({reason}); please report it at {ISSUES_URL} with the command line "
            f"(set {DEBUG_ENV}=1 to see the traceback)",
            EXIT_FAILURE,
        )


def _warning_printer(python_printer: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints warnings of x2ct's own categories as one line
    ``x2ct: warning: [rank R: ]<message>`` and leaves other warnings to ``python_printer``."""

    def show(
        message: Warning | str,
        category: Type[Warning],
        filename: str,
        lineno: int,
        file: Optional[TextIO] = None,
        line: Optional[str] = None,
    ) -> None:
        if category.__module__.split(".")[0] != __package__:
            python_printer(message, category, filename, lineno, file, line)
            return
        text = " ".join(str(message).split())
        print(f"{PROG}: warning: {_rank_prefix()}{text}", file=sys.stderr if file is None else file)

    return show


if __name__ == "__main__":
    sys.exit(main())
