"""Train on DRRs, test on simulated clinical radiographs: the domain gap and what closes it (docs/domain_gap.md).

Usage (from the repository root; every step resumes, so an interrupted run can be restarted)::

    python docs/domain_gap.py --work WORK [--cases 120] [--epochs 1] [--rows ROW,ROW,...]

``--train-only`` runs only the fine-tunes and ``--no-train`` scores only the rows whose fine-tune is done
(the others "not run"), so that one process can train while another scores.

1. **Test cases**: the test split of ``--data`` (built by ``x2ct build-dataset
   --synthetic-from sample --cases 1200 --seed 11 --split 0.6,0.1,0.3 --size 64``, the data the bundled TB
   classifier was trained and tested on), all of them or a seeded subset of ``--cases``. ``WORK/data_clean``
   lists them (the case folders are links; nothing is written into ``--data``).
2. **Test domain**: ``x2ct simulate-radiographs --seed SIM_SEED`` (docs/clinical_simulator.md) makes a
   simulated CR/DX DICOM pair of each test case. ``WORK/data_clinical`` holds copies of the case files
   whose ``xray1`` (PA) and ``xray2`` (lateral) are those DICOMs prepared exactly as ``x2ct predict``
   prepares a generator's input (:func:`x2ct.data.radiograph_folder.model_input`: field of view, size,
   min-max, 8 bits), stored as the builder stores DRRs (uint8 0..255); ``WORK/data_styled`` the same after
   the CycleGAN style model, as ``x2ct predict --style`` applies it (:func:`x2ct.inference.style.apply_style`
   then :func:`x2ct.inference.preprocess.match_intensity`). CTs and lesion masks are the originals.
   So every existing evaluator runs unchanged, and the TB classifier also gets the simulated PA.
3. **Fine-tunes** (``x2ct train-generator --set init_from=x2ct-demo-biplanar``, the bundled generator's
   recipe, docs/bundle_demo_generators.py, one torch thread, ``--epochs`` epochs each, one after the other):
   the control (its own DRR training data, nothing else), simulator augmentation (``clinical_augment=0.5``),
   shape induction (``--shape-induction`` on simulated radiographs of the TRAINING split of the training
   data ``--train-data`` (built by TRAIN_DATA_BUILD), seed TRAIN_SIM_SEED; λ4 and the schedule at their
   defaults) and augmentation + shape induction (shape induction started from the augmentation run), each
   also with ``shape_mode=joint`` (every step a paired batch too: docs/shape_induction.md). An
   equal number of steps rather than wall-clock minutes, so that a shared machine gives every row the
   same compute.
4. **Scores** of every row: ``x2ct evaluate-generator`` (image and lesion metrics, docs/metric_protocol.md),
   ``x2ct synthesize-ct`` then ``x2ct evaluate-classifier --ct-source`` with the bundled ``x2ct-demo-tb``
   (AUC with its DeLong CI, ``--compare`` against the no-adaptation row: paired DeLong), and the
   re-projection consistency of ``x2ct predict`` (:func:`x2ct.inference.run.consistency_scores`: Pearson
   correlation of the synthetic CT's re-projections with the model inputs, mean over the views).

Writes ``docs/domain_gap.json`` (paths relative to WORK) and the table between the markers of
``docs/domain_gap.md``; the CPU model and the CPU minutes of every step (``os.wait4`` of each x2ct process,
the process's own for the steps run inside this script) go into the JSON. A row whose prerequisite is
missing (e.g. the style model) is written "not run" with the reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from bundle_demo_generators import RECIPE, x2ct  # this folder (docs/) is on sys.path when the script runs
from compare_generators import _ci, _normal_ci, relative_contrasts

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "domain_gap.json"
DOC = REPO / "docs" / "domain_gap.md"
BEGIN, END = "<!-- domain-gap:start -->", "<!-- domain-gap:end -->"
GENERATOR = "x2ct-demo-biplanar"
CLASSIFIER = REPO / "Resources" / "Classifiers" / "x2ct-demo-tb"
STYLE = "x2ct-demo-style"
DATA_BUILD = "x2ct build-dataset --synthetic-from sample --cases 1200 --seed 11 --split 0.6,0.1,0.3 --size 64"
"""How ``--data`` is built (the data of docs/reproduce_seed_table.py)."""
TRAIN_DATA_BUILD = "x2ct build-dataset --synthetic-from sample --cases 600 --seed 7 --size 64"
"""How ``--train-data`` is built (the data of docs/bundle_demo_generators.py)."""
SIM_SEED = 5
"""Simulator seed of the test radiographs (the demo style model was trained on seeds 1 and 2 of another build)."""
TRAIN_SIM_SEED = 4
"""Simulator seed of the shape-induction radiographs (training split of the training data)."""
FINE_TUNE = tuple(item for item in RECIPE if not item.startswith("seed=")) + (
    "views=2", "grid_size=64", "device=cpu", "threads=1", "seed=1", f"init_from={GENERATOR}",
)  # fmt: skip
"""The bundled biplanar generator's settings (docs/bundle_demo_generators.py), started from its weights."""


@dataclass(frozen=True)
class FineTune:
    """One fine-tune of the bundled generator: extra ``--set`` settings, whether it uses shape induction, and the
    fine-tune it starts from (None: the bundled generator)."""

    key: str
    settings: Tuple[str, ...] = ()
    shape_induction: bool = False
    start: Optional[str] = None


FINE_TUNES = (
    FineTune("control"),
    FineTune("augment", ("clinical_augment=0.5",)),
    FineTune("shape", shape_induction=True),
    FineTune("augment_shape", shape_induction=True, start="augment"),
    FineTune("shape_joint", ("shape_mode=joint",), shape_induction=True),
    FineTune("augment_shape_joint", ("shape_mode=joint",), shape_induction=True, start="augment"),
    FineTune("shape_joint_augment", ("shape_mode=joint", "clinical_augment=0.5"), shape_induction=True),
)
BY_TUNE = {tune.key: tune for tune in FINE_TUNES}


@dataclass(frozen=True)
class Row:
    """One table row: the generator (None: the bundled one, else a fine-tune's key) and the test inputs
    (``clean`` DRRs, ``clinical`` simulated radiographs, ``styled``: those after the CycleGAN)."""

    key: str
    label: str
    tune: Optional[str]
    inputs: str


ROWS = (
    Row("drr_reference", "reference: clean DRRs (no domain gap)", None, "clean"),
    Row("no_adaptation", "no adaptation", None, "clinical"),
    Row("control", "control: fine-tuned on DRRs only", "control", "clinical"),
    Row("augment", "simulator augmentation", "augment", "clinical"),
    Row("shape", "shape induction", "shape", "clinical"),
    Row("augment_shape", "augmentation + shape induction", "augment_shape", "clinical"),
    Row("shape_joint", "shape induction (joint)", "shape_joint", "clinical"),
    Row("augment_shape_joint", "augmentation + shape induction (joint)", "augment_shape_joint", "clinical"),
    Row("shape_joint_augment", "shape induction (joint, augmented paired batches)", "shape_joint_augment",
        "clinical"),
    Row("cyclegan", "CycleGAN preprocessing", None, "styled"),
    Row("augment_cyclegan", "augmentation + CycleGAN", "augment", "styled"),
    Row("shape_cyclegan", "shape induction + CycleGAN", "shape", "styled"),
    Row("all_three", "augmentation + shape induction + CycleGAN", "augment_shape", "styled"),
    Row("shape_joint_cyclegan", "shape induction (joint) + CycleGAN", "shape_joint", "styled"),
    Row("all_three_joint", "augmentation + shape induction (joint) + CycleGAN", "augment_shape_joint", "styled"),
)
BASELINE = "no_adaptation"


class NotReady(Exception):
    """A row's prerequisite is missing (its message says which); the row is written "not run"."""


class Work:
    """The working folder, the run's options and the CPU minutes of every step (WORK/costs.json)."""

    def __init__(self, root: Path, options: argparse.Namespace) -> None:
        self.root = root
        self.options = options
        self.costs_dir = root / "costs"

    @property
    def costs(self) -> Dict[str, Dict[str, float]]:
        """{step: {cpu_minutes, wall_minutes}} of every finished step (one file each, so that two invocations on
        the same WORK, one training and one scoring, never write the same file)."""
        files = sorted(self.costs_dir.glob("*.json")) if self.costs_dir.is_dir() else []
        return {path.stem: json.loads(path.read_text()) for path in files}

    def record(self, step: str, cpu_s: float, wall_s: float) -> None:
        self.costs_dir.mkdir(exist_ok=True)
        cost = {"cpu_minutes": cpu_s / 60.0, "wall_minutes": wall_s / 60.0}
        (self.costs_dir / f"{step}.json").write_text(json.dumps(cost) + "\n")

    def x2ct(self, step: str, *args: object) -> None:
        """Run one x2ct command (one torch thread), its output in WORK/logs/<step>.log; record its CPU minutes."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        print(f"{time.strftime('%H:%M:%S')} {step}: x2ct {' '.join(map(str, args[:3]))} ...", flush=True)
        with open(logs / f"{step}.log", "w") as log:
            start = time.monotonic()
            process = subprocess.Popen(x2ct(*args), stdout=log, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{step} failed: see {logs / f'{step}.log'}")
        self.record(step, usage.ru_utime + usage.ru_stime, time.monotonic() - start)

    def inside(self, step: str, work: Callable[[], None]) -> None:
        """Run ``work`` in this process and record the CPU minutes it used."""
        print(f"{time.strftime('%H:%M:%S')} {step} ...", flush=True)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        work()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.record(step, cpu, time.monotonic() - start)


# ----------------------------------------------------------------------------------------------- test data
def choose_cases(work: Work) -> List[Dict[str, str]]:
    """The manifest rows of the test cases (all, or a subset of ``--cases`` drawn with ``--subset-seed``); the
    choice is kept in WORK/cases.json and a rerun with other options is refused."""
    with open(work.options.data / "manifest.csv", newline="") as fh:
        test = [row for row in csv.DictReader(fh) if row["split"] == "test"]
    wanted = work.options.cases
    ids = sorted(row["case_id"] for row in test)
    if 0 < wanted < len(ids):
        ids = sorted(random.Random(work.options.subset_seed).sample(ids, wanted))
    chosen = work.root / "cases.json"
    if chosen.is_file() and json.loads(chosen.read_text()) != ids:
        raise SystemExit(f"{chosen}: made with other --data/--cases/--subset-seed; use another --work")
    if not chosen.is_file():
        chosen.write_text(json.dumps(ids) + "\n")
    keep = set(ids)
    return [row for row in test if row["case_id"] in keep]


def write_manifest(target: Path, rows: Sequence[Dict[str, str]]) -> None:
    with open(target / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def clean_data(work: Work, rows: Sequence[Dict[str, str]]) -> Path:
    """WORK/data_clean: the chosen test cases, their case folders linked from ``--data``."""
    target = work.root / "data_clean"
    if not (target / "manifest.csv").is_file():
        partial = work.root / "data_clean.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for row in rows:
            case = Path(row["path"]).parent
            (partial / case).symlink_to((work.options.data / case).resolve(), target_is_directory=True)
        write_manifest(partial, rows)
        partial.rename(target)
    return target


def input_spec() -> Any:
    """The bundled generator's input spec (every fine-tune shares it)."""
    from x2ct.inference.models import load_model

    return load_model(GENERATOR, "cpu").spec


def variant_data(work: Work, name: str, rows: Sequence[Dict[str, str]], simulated: Path, style: Any) -> Path:
    """WORK/data_<name>: copies of the test case files whose ``xray1``/``xray2`` are the simulated radiographs as
    predict prepares them (after ``style`` when given), 8-bit as the builder stores DRRs (module doc)."""
    import h5py

    from x2ct.data.loader import STORED_NAMES, XRAY_RANGE
    from x2ct.data.radiograph_folder import model_input, read_radiograph_folder
    from x2ct.inference.preprocess import match_intensity
    from x2ct.inference.style import apply_style
    from x2ct.views import LATERAL, PA, input_key

    target = work.root / f"data_{name}"
    if (target / "manifest.csv").is_file():
        return target
    spec = input_spec()
    files = {case.case_id: case.files for case in read_radiograph_folder(simulated, (PA, LATERAL))}

    def build() -> None:
        partial = work.root / f"data_{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for row in rows:
            source, copy = work.options.data / row["path"], partial / row["path"]
            copy.parent.mkdir(parents=True)
            shutil.copyfile(source, copy)
            with h5py.File(copy, "r+") as f:
                for view in (PA, LATERAL):
                    image = model_input(files[row["case_id"]][view], view, spec)
                    if style is not None:
                        image = match_intensity(apply_style(style, image), spec)
                    stored = STORED_NAMES[input_key(view)]
                    del f[stored]
                    f.create_dataset(stored, data=np.round(image * XRAY_RANGE).astype(np.uint8), track_times=False)
        write_manifest(partial, rows)
        if style is not None:  # the style model these inputs were made with (a bundled one may be replaced later)
            (partial / "style.json").write_text(json.dumps({"name": style.name, "sha256": style.sha256}) + "\n")
        partial.rename(target)

    work.inside(f"inputs_{name}", build)
    return target


def load_style(work: Work) -> Any:
    """The style model, or NotReady naming why it cannot be loaded."""
    from x2ct.errors import InputError
    from x2ct.inference.style import load_style as load

    try:
        return load(work.options.style, "cpu")
    except InputError as err:
        raise NotReady(f"style model {work.options.style} not available ({err})") from None


# ----------------------------------------------------------------------------------------------- fine-tunes
def simulate(work: Work, step: str, data: Path, split: str, seed: int) -> Path:
    out = work.root / step
    if not (out / "manifest.csv").is_file():
        work.x2ct(step, "simulate-radiographs", "--data", data, "--split", split, "--seed", seed, "-o", out)
    return out


def fine_tune(work: Work, tune: FineTune) -> Path:
    """The fine-tune's model folder, trained (resuming) if needed."""
    run = work.root / "runs" / tune.key
    model = run / "model"
    if (model / "model.json").is_file():
        return model
    if work.options.no_train:
        raise NotReady(f"fine-tune {tune.key} not trained yet")
    sets = [*FINE_TUNE, f"epochs_constant={work.options.epochs}", "epochs_decay=0", *tune.settings]
    if tune.start is not None:
        sets.append(f"init_from={fine_tune(work, BY_TUNE[tune.start])}")
    args: List[object] = ["train-generator", "--data", work.options.train_data, "-o", run]
    if tune.shape_induction:
        radiographs = simulate(work, "sim_train", work.options.train_data, "train", TRAIN_SIM_SEED)
        args += ["--shape-induction", radiographs]
    work.x2ct(f"train_{tune.key}", *args, *[part for item in sets for part in ("--set", item)])
    return model


# ----------------------------------------------------------------------------------------------- scoring
def consistency(work: Work, data: Path, cts: Path, target: Path) -> None:
    """Mean re-projection consistency (Pearson r of each view's re-projection with its model input, as x2ct
    predict reports it) over the cases, with a normal-approximation 95 % CI; written to ``target``."""
    import SimpleITK as sitk

    from x2ct.data.loader import read_case
    from x2ct.inference.run import consistency_scores, reproject
    from x2ct.views import LATERAL, PA, input_key

    spec = input_spec()
    with open(data / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    values = []
    for row in rows:
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(cts / row["case_id"] / "synthetic_ct.nrrd")))
        inputs = read_case(data / row["path"], {input_key(PA): spec.size, input_key(LATERAL): spec.size})
        scores = [
            consistency_scores(reproject(volume.astype(np.float32), view, spec, "cpu"), inputs[input_key(view)])
            for view in (PA, LATERAL)
        ]
        values.append(float(np.mean([s["ncc"] for s in scores])))
    mean, half = float(np.mean(values)), 1.96 * float(np.std(values, ddof=1)) / len(values) ** 0.5
    target.write_text(json.dumps({"mean": mean, "ci": [mean - half, mean + half], "n": len(values)}) + "\n")


def model_of(work: Work, row: Row) -> Any:
    """The row's generator: the bundled name, or its fine-tune's model folder."""
    return GENERATOR if row.tune is None else work.root / "runs" / row.tune / "model"


def outputs(work: Work, row: Row) -> Dict[str, Path]:
    """Where the row's scores go: evaluate-generator, synthetic CTs, consistency, classifier."""
    return {
        "generator": work.root / "evals" / row.key,
        "cts": work.root / "ct" / row.key,
        "consistency": work.root / "evals" / f"{row.key}.consistency.json",
        "classifier": work.root / "classifier" / row.key,
    }


def score(work: Work, row: Row, data: Dict[str, Path]) -> None:
    """Compute the row's image, lesion, consistency and classifier scores (each step skipped when done)."""
    model: Any = GENERATOR if row.tune is None else fine_tune(work, BY_TUNE[row.tune])
    inputs, out = data[row.inputs], outputs(work, row)
    if not (out["generator"] / "metrics_summary.json").is_file():
        work.x2ct(f"evaluate_{row.key}", "evaluate-generator", "--model", model, "--data", inputs, "--split",
                  "test", "-o", out["generator"], "--device", "cpu")  # fmt: skip
    if not (out["cts"] / "manifest.csv").is_file():
        work.x2ct(f"synthesize_{row.key}", "synthesize-ct", "--model", model, "--data", inputs, "--split", "test",
                  "-o", out["cts"], "--device", "cpu")  # fmt: skip
    if not out["consistency"].is_file():
        work.inside(f"consistency_{row.key}", lambda: consistency(work, inputs, out["cts"], out["consistency"]))
    if not (out["classifier"] / "metrics.json").is_file():
        if row.key != BASELINE and not (work.root / "classifier" / BASELINE / "metrics.json").is_file():
            raise NotReady("the no-adaptation row is not scored yet")
        args: List[object] = ["evaluate-classifier", "--model", CLASSIFIER, "--data", inputs, "--split", "test",
                              "--ct-source", out["cts"], "-o", out["classifier"], "--device", "cpu"]  # fmt: skip
        if row.key != BASELINE:
            args += ["--compare", work.root / "classifier" / BASELINE]
        work.x2ct(f"classify_{row.key}", *args)


def collect(work: Work, row: Row) -> Optional[Dict[str, Any]]:
    """The row's record from its finished scores (None when some are missing)."""
    out, model = outputs(work, row), model_of(work, row)
    done = (out["generator"] / "metrics_summary.json", out["consistency"], out["classifier"] / "metrics.json")
    if not all(path.is_file() for path in done):
        return None
    record: Dict[str, Any] = {
        "label": row.label,
        "generator": str(model),
        "inputs": row.inputs,
        "summary": json.loads(done[0].read_text()),
        "consistency": json.loads(done[1].read_text()),
        "classifier": json.loads(done[2].read_text()),
    }
    if row.tune is not None:
        metas = [json.loads((work.root / "runs" / key / "model" / "model.json").read_text()) for key in chain(row.tune)]
        record["fine_tune"] = {name: sum(meta["training"][name] for meta in metas) for name in ("steps", "seconds")}
        record["fine_tune_cpu_minutes"] = sum(work.costs[f"train_{key}"]["cpu_minutes"] for key in chain(row.tune))
    if row.key != BASELINE and (work.root / "evals" / BASELINE / "lesions_per_lesion.csv").is_file():
        record["minus_no_adaptation"] = paired_differences(work, row.key)
    return record


def chain(key: str) -> List[str]:
    """A fine-tune's key and those of the fine-tunes it starts from."""
    tune = BY_TUNE[key]
    return [key] + (chain(tune.start) if tune.start else [])


def paired_differences(work: Work, key: str) -> Dict[str, Any]:
    """Row − no adaptation on the same cases: MAE in the body (HU; per case, normal 95 % CI) and lesion relative
    contrast (same lesions, 95 % bootstrap CI over cases)."""
    from x2ct.evaluate.lesion_metrics import bootstrap_mean_ci

    def mae(name: str) -> Dict[str, float]:
        with open(work.root / "evals" / name / "metrics_per_case.csv", newline="") as fh:
            return {r["case_id"]: float(r["mae_hu_body"]) for r in csv.DictReader(fh)}

    mine, base = mae(key), mae(BASELINE)
    diffs = np.array([mine[c] - base[c] for c in mine if c in base])
    half = 1.96 * float(diffs.std(ddof=1)) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    contrasts = (relative_contrasts(work.root, key), relative_contrasts(work.root, BASELINE))
    by_case: Dict[str, List[float]] = {}
    for lesion, value in contrasts[0].items():
        if lesion in contrasts[1]:
            by_case.setdefault(lesion[0], []).append(value - contrasts[1][lesion])
    values = [v for group in by_case.values() for v in group]
    return {
        "mae_hu_body": {"mean": float(diffs.mean()), "ci": [float(diffs.mean()) - half, float(diffs.mean()) + half]},
        "relative_contrast": {"mean": float(np.mean(values)) if values else None,
                              "ci": bootstrap_mean_ci(list(by_case.values())) if values else None,
                              "lesions": len(values)},
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- table
def _auc(record: Dict[str, Any]) -> str:
    auc = record["classifier"]["outputs"]["tb_present"]["auc"]
    return _ci(auc["value"], (auc["ci_low"], auc["ci_high"]))


def _delong(record: Dict[str, Any]) -> str:
    comparison = (record["classifier"].get("comparison") or {}).get("outputs", {}).get("tb_present")
    if not comparison:
        return "–"
    p = comparison["p_value"]
    cell = f"{comparison['difference']:+.2f} [{comparison['ci_low']:+.2f}, {comparison['ci_high']:+.2f}]"
    return cell + (", p < 0.001" if p < 0.001 else f", p = {p:.3f}")


def _minus(record: Dict[str, Any], name: str, digits: int) -> str:
    diff = (record.get("minus_no_adaptation") or {}).get(name)
    if not diff or diff["mean"] is None:
        return "–"
    mean, ci = diff["mean"], diff["ci"]
    return f"{mean:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def table(results: Dict[str, Any]) -> List[str]:
    lines = ["| row | inputs | fine-tune CPU-min (steps) | MAE in the body, HU | minus no adaptation | 3D SSIM | "
             "lesion relative contrast [95% CI] | minus no adaptation | lesions shown | re-projection r | TB AUC [95% "
             "DeLong CI] | AUC minus no adaptation, paired DeLong |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    inputs = {"clean": "clean DRRs", "clinical": "simulated CR/DX", "styled": "simulated CR/DX → CycleGAN"}
    for row in ROWS:
        r = results["rows"].get(row.key)
        if r is None or "not_run" in r:
            reason = "not run" if r is None else f"not run: {r['not_run']}"
            lines.append(f"| {row.label} | {inputs[row.inputs]} | {reason} |" + " |" * 9)
            continue
        tune = r.get("fine_tune")
        cost = "–" if tune is None else f"{r['fine_tune_cpu_minutes']:.1f} ({tune['steps']})"
        lesions = r["summary"]["lesions"]["overall"]
        low, high = lesions["relative_contrast_ci_low"], lesions["relative_contrast_ci_high"]
        contrast = _ci(lesions["relative_contrast_mean"], None if low is None else (low, high))
        agreement = _ci(r["consistency"]["mean"], r["consistency"]["ci"], 3)
        lines.append(
            f"| {row.label} | {inputs[row.inputs]} | {cost} | {_normal_ci(r['summary'], 'mae_hu_body', 1)} | "
            f"{_minus(r, 'mae_hu_body', 1)} | {_normal_ci(r['summary'], 'honest_ssim_3d', 3)} | {contrast} | "
            f"{_minus(r, 'relative_contrast', 2)} | {lesions['n_show']}/{lesions['n_usable']} | {agreement} | "
            f"{_auc(r)} | {_delong(r)} |"
        )
    return lines


def portable(value: Any, work: Path, data: Path, train_data: Path) -> Any:
    if isinstance(value, dict):
        return {k: portable(v, work, data, train_data) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, work, data, train_data) for v in value]
    if not isinstance(value, str):
        return value
    places = {str(work.resolve()): "WORK", str(work): "WORK", str(data.resolve()): "DATA", str(data): "DATA",
              str(train_data.resolve()): "TRAIN_DATA", str(train_data): "TRAIN_DATA"}  # fmt: skip
    for path in sorted(places, key=len, reverse=True):  # the longest first: one may lie inside another
        value = value.replace(path, places[path])
    return value.replace(str(REPO) + "/", "")


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (inputs, runs, evaluations, logs)")
    parser.add_argument("--data", type=Path, required=True,
                        help=f"benchmark whose test split is scored (built by: {DATA_BUILD})")  # fmt: skip
    parser.add_argument("--train-data", type=Path, required=True,
                        help=f"the bundled generator's training data (built by: {TRAIN_DATA_BUILD})")  # fmt: skip
    parser.add_argument("--cases", type=int, default=0, help="seeded subset of the test split (default 0: all)")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the subset (default 0)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of every fine-tune (default 1: 120 steps on the default data)")  # fmt: skip
    parser.add_argument("--train-only", action="store_true", help="only train the fine-tunes the rows need")
    parser.add_argument("--no-train", action="store_true",
                        help="score only rows whose fine-tune is trained (the others: not run)")  # fmt: skip
    parser.add_argument("--style", default=STYLE, help=f"style model name or folder (default {STYLE})")
    parser.add_argument("--rows", help="comma list of row keys (default: all); " + ", ".join(r.key for r in ROWS))
    parser.add_argument("--no-doc", action="store_true", help="write WORK/domain_gap.json only (a trial run)")
    options = parser.parse_args(argv)
    work = Work(options.work, options)
    options.work.mkdir(parents=True, exist_ok=True)
    rows = [row for row in ROWS if not options.rows or row.key in options.rows.split(",")]
    if options.train_only:
        for key in dict.fromkeys(row.tune for row in rows if row.tune is not None):
            fine_tune(work, BY_TUNE[key])
        return 0
    rows.sort(key=lambda r: r.key != BASELINE)  # the others are compared with it
    cases = choose_cases(work)
    data = {"clean": clean_data(work, cases)}
    simulated = simulate(work, "sim_test", data["clean"], "test", SIM_SEED)
    data["clinical"] = variant_data(work, "clinical", cases, simulated, None)
    reasons = work.root / "not_run"
    reasons.mkdir(exist_ok=True)
    for row in rows:
        try:
            if row.inputs == "styled" and "styled" not in data:
                data["styled"] = variant_data(work, "styled", cases, simulated, load_style(work))
            score(work, row, data)
        except NotReady as why:
            print(f"{row.key}: not run ({why})", flush=True)
            (reasons / f"{row.key}.txt").write_text(str(why) + "\n")
            continue
        write(work, options, len(cases))
    write(work, options, len(cases))
    return 0


def write(work: Work, options: argparse.Namespace, n_cases: int) -> None:
    """The results of every row scored so far (the others "not run", with the reason last seen) into the JSON and
    the doc's table (``--no-doc``: WORK/domain_gap.json and the table printed)."""
    results: Dict[str, Any] = {"rows": {}}
    for row in ROWS:
        record = collect(work, row)
        if record is None:
            why = work.root / "not_run" / f"{row.key}.txt"
            record = {"label": row.label, "not_run": why.read_text().strip() if why.is_file() else "not scored"}
        results["rows"][row.key] = record
    target = work.root / "domain_gap.json" if options.no_doc else RESULTS
    command = f"python docs/domain_gap.py --work WORK --data DATA --train-data TRAIN_DATA --epochs {options.epochs}"
    if options.cases:
        command += f" --cases {options.cases} --subset-seed {options.subset_seed}"
    used = work.root / "data_styled" / "style.json"
    style = json.loads(used.read_text()) if used.is_file() else None
    results.update({
        "command": command, "cpu": cpu_model(), "cores": os.cpu_count(), "threads": 1, "test_cases": n_cases,
        "data": str(options.data), "train_data": str(options.train_data), "epochs": options.epochs,
        "builds": {"DATA (default)": DATA_BUILD, "TRAIN_DATA (default)": TRAIN_DATA_BUILD},
        "simulator_seeds": {"test": SIM_SEED, "shape_induction_training": TRAIN_SIM_SEED},
        "generator": GENERATOR, "classifier": str(CLASSIFIER), "fine_tune_settings": list(FINE_TUNE),
        "style": style,
        "costs": work.costs, "total_cpu_minutes": sum(c["cpu_minutes"] for c in work.costs.values()),
    })  # fmt: skip
    from x2ct.atomic import write_text_atomic  # two invocations (training, scoring) may write at once

    document = portable(results, work.root, options.data, options.train_data)
    write_text_atomic(target, json.dumps(document, indent=2) + "\n")
    if target != RESULTS:
        print("\n".join(table(results)))
        return
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = [f"Command: `{command}` ({results['cpu']}, {results['cores']} cores shared with other jobs; one torch "
            f"thread per step; {n_cases} test cases; {results['total_cpu_minutes']:.0f} CPU minutes in all)", "",
            *table(results)]  # fmt: skip
    write_text_atomic(DOC, head + BEGIN + "\n" + "\n".join(body) + "\n" + END + tail)
    print(f"wrote {RESULTS} and {DOC}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
