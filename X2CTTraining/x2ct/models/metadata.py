"""The one metadata schema of x2ct models (generators and classifiers alike): ``model.json`` beside the weights.

Modelled on the ``metadata.json`` of MONAI bundles (Project-MONAI, *MONAI Bundle Specification*):
a schema name and version, the model's own ``version`` with a ``changelog``, the library versions it
was made with, and a ``network_data_format`` that says what each input and output tensor holds. What
a program needs is in machine fields; explanations for people stay in the model's ``MODEL_CARD.md``.

``schema_version`` 2 (written by this version)::

    {"schema": "x2ct-model", "schema_version": 2, "kind": "generator" | "classifier" | "style",
     "name": "x2ct-demo-biplanar", "version": "1.0.0", "changelog": {"1.0.0": "..."},
     "x2ct_version": "0.1.0", "pytorch_version": "2.13.0",
     "weights": {"file": "model.safetensors", "sha256": "...", "parameters": 655093},
     "network": {"architecture": "x2ct_gan_biplanar", "config": {"grid_size": 64, ...}},
     "network_data_format": {"inputs": {"pa": {...}, "lateral": {...}}, "outputs": {"ct": {...}}},
     "task": null | {"name": "tb", "outputs": ["tb_present"], "thresholds": {"tb_present": 0.76}, ...},
     "training": {...}, "training_data": {...}, "metrics": {...}, "source": {...}}

Each ``network_data_format`` entry is a :class:`TensorFormat`. Schema 1 (``format`` "x2ct-generator" or
"x2ct-classifier", ``format_version`` 1, written before this module) is still read: :func:`migrate`
turns it into schema 2 in memory, and ``x2ct migrate-model`` rewrites the file, moving its prose
fields into the model card. Unknown future schema versions are refused with a one-line error.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import InputError
from ..geometry import AXES
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..views import CT_KEY, LATERAL, LATERAL_KEY, PA, PA_KEY, input_key, view_of_key

SCHEMA = "x2ct-model"
SCHEMA_VERSION = 2
GENERATOR = "generator"
CLASSIFIER = "classifier"
STYLE = "style"
"""A radiograph style-transfer model (real radiograph -> DRR look; x2ct.inference.style)."""
KINDS = (GENERATOR, CLASSIFIER, STYLE)
METADATA_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
FIRST_VERSION = "1.0.0"

LEGACY_FORMATS = {"x2ct-generator": GENERATOR, "x2ct-classifier": CLASSIFIER}
"""Schema 1: the ``format`` entry of each kind."""

RADIOGRAPH_AXES = {
    PA_KEY: "rows superior->inferior, columns patient right->left",
    LATERAL_KEY: "rows superior->inferior, columns anterior->posterior",
}
"""Pixel axes of each radiograph input (the display convention of :mod:`x2ct.views`)."""

BUILD_PROSE = ("ct_convention", "xray_convention", "axes", "synthetic_drrs", "body_mask")
"""Data-set attributes that are sentences (x2ct.data.builder): described by docs/datasets.md, not copied into models."""

MINMAX = "per_image_minmax"
"""Intensity normalisation of radiograph inputs: each image scaled from its minimum to its maximum onto [0, 1]."""


@dataclass(frozen=True)
class TensorFormat:
    """One input or output tensor of a network (a MONAI ``network_data_format`` entry, per case: no batch axis).

    ``type``: "image" or "logits"; ``format``: what the values are ("radiograph", "ct_unit" =
    clip(HU + 1024, 0, 2500) / 2500, "logits"); ``modality``: DICOM modality of an image ("DX", "CT");
    ``spatial_shape``: pixels per axis, in the order of ``axes``; ``channel_def``: channel index ->
    name; ``view``: a radiograph's view (PA, LATERAL); ``preprocessing``: the machine description of
    how an input must be prepared (normalisation, quantisation bits, the DRR geometry it was
    trained on).
    """

    type: str
    format: str
    num_channels: int
    spatial_shape: Tuple[int, ...]
    dtype: str = "float32"
    value_range: Optional[Tuple[float, float]] = (0.0, 1.0)
    modality: Optional[str] = None
    axes: Optional[str] = None
    view: Optional[str] = None
    channel_def: Dict[str, str] = field(default_factory=dict)
    preprocessing: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        document: Dict[str, Any] = {
            "type": self.type,
            "format": self.format,
            "num_channels": self.num_channels,
            "spatial_shape": list(self.spatial_shape),
            "dtype": self.dtype,
            "value_range": None if self.value_range is None else list(self.value_range),
        }
        for key in ("modality", "axes", "view"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        if self.channel_def:
            document["channel_def"] = dict(self.channel_def)
        if self.preprocessing:
            document["preprocessing"] = copy.deepcopy(self.preprocessing)
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> TensorFormat:
        value_range = document.get("value_range")
        return cls(
            type=str(document["type"]),
            format=str(document["format"]),
            num_channels=int(document["num_channels"]),
            spatial_shape=tuple(int(n) for n in document["spatial_shape"]),
            dtype=str(document.get("dtype", "float32")),
            value_range=None if value_range is None else (float(value_range[0]), float(value_range[1])),
            modality=document.get("modality"),
            axes=document.get("axes"),
            view=document.get("view"),
            channel_def={str(k): str(v) for k, v in dict(document.get("channel_def") or {}).items()},
            preprocessing=dict(document.get("preprocessing") or {}),
        )


def radiograph_input(key: str, size: int, preprocessing: Optional[Mapping[str, Any]] = None) -> TensorFormat:
    """A radiograph input (``key`` "pa" or "lateral") of ``size`` x ``size`` pixels in [0, 1], bone bright."""
    return TensorFormat(
        type="image",
        format="radiograph",
        num_channels=1,
        spatial_shape=(int(size), int(size)),
        modality="DX",
        axes=RADIOGRAPH_AXES[key],
        view=view_of_key(key),
        preprocessing=dict(preprocessing or {}),
    )


def ct_tensor(size: int) -> TensorFormat:
    """A CT of ``size``³ voxels on the unit scale of :mod:`x2ct.intensity`, canonical axes (:mod:`x2ct.geometry`)."""
    return TensorFormat(
        type="image",
        format="ct_unit",
        num_channels=1,
        spatial_shape=(int(size),) * 3,
        modality="CT",
        axes=AXES,
        preprocessing={"hu_offset": HU_OFFSET, "unit_range": UNIT_RANGE},
    )


def logits(outputs: List[str]) -> TensorFormat:
    """A classifier's outputs: one logit per label column (probability = sigmoid, multi-label)."""
    return TensorFormat(
        type="logits",
        format="logits",
        num_channels=len(outputs),
        spatial_shape=(),
        value_range=None,
        channel_def={str(i): name for i, name in enumerate(outputs)},
    )


@dataclass(frozen=True)
class TaskSpec:
    """A classifier's task: ``name`` (x2ct.classify.tasks), its ``outputs`` (label columns) and the frozen
    decision ``thresholds`` per output (``threshold_rule`` on ``threshold_split``)."""

    name: str
    outputs: Tuple[str, ...]
    thresholds: Dict[str, float]
    threshold_rule: str = "youden_j"
    threshold_split: str = "val"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "outputs": list(self.outputs),
            "thresholds": dict(self.thresholds),
            "threshold_rule": self.threshold_rule,
            "threshold_split": self.threshold_split,
        }


@dataclass(frozen=True)
class ModelMetadata:
    """The content of a model's ``model.json`` (module doc), typed. ``path`` (not written): the folder it was
    read from, when it was read from disk."""

    kind: str
    architecture: str
    network_config: Dict[str, Any]
    inputs: Dict[str, TensorFormat]
    outputs: Dict[str, TensorFormat]
    sha256: Optional[str] = None
    weights_file: str = WEIGHTS_FILE
    parameters: Optional[int] = None
    name: Optional[str] = None
    version: str = FIRST_VERSION
    changelog: Dict[str, str] = field(default_factory=dict)
    x2ct_version: Optional[str] = None
    pytorch_version: Optional[str] = None
    task: Optional[TaskSpec] = None
    training: Dict[str, Any] = field(default_factory=dict)
    training_data: Any = None
    metrics: Any = None
    source: Any = None
    path: Optional[str] = None

    # ---- what the pipeline asks

    @property
    def input_keys(self) -> Tuple[str, ...]:
        """The input keys in :data:`x2ct.views.INPUT_KEYS` order."""
        return tuple(key for key in (PA_KEY, LATERAL_KEY, CT_KEY) if key in self.inputs)

    @property
    def views(self) -> Tuple[str, ...]:
        """The radiograph views a model takes (PA, and LATERAL for a biplanar one)."""
        return tuple(view_of_key(key) for key in self.input_keys if key != CT_KEY)

    def input_size(self, key: str) -> int:
        """Pixels per edge of input ``key``."""
        return int(self.inputs[key].spatial_shape[0])

    @property
    def ct_source(self) -> Optional[str]:
        """What a classifier's CT input was in training: the generator's name for synthetic CTs, ``"real"``
        for the data set's CTs, None without a CT input or when unrecorded."""
        if CT_KEY not in self.inputs:
            return None
        source = (self.training_data or {}).get("ct_source") if isinstance(self.training_data, dict) else None
        source = source or {}
        if source.get("kind") == "real":
            return "real"
        return (source.get("generator") or {}).get("model")

    def thresholds(self) -> Dict[str, float]:
        """The frozen thresholds by output (InputError naming the file when one is missing)."""
        if self.task is None:
            raise InputError(self.path, "not a classifier: no task in the model metadata")
        missing = [name for name in self.task.outputs if name not in self.task.thresholds]
        if missing:
            raise InputError(self.path, f"no frozen threshold for {', '.join(missing)} in the model metadata")
        return {name: float(self.task.thresholds[name]) for name in self.task.outputs}

    # ---- files

    def to_dict(self) -> Dict[str, Any]:
        """The ``model.json`` document (schema 2)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "changelog": dict(self.changelog),
            "x2ct_version": self.x2ct_version,
            "pytorch_version": self.pytorch_version,
            "weights": {"file": self.weights_file, "sha256": self.sha256, "parameters": self.parameters},
            "network": {"architecture": self.architecture, "config": copy.deepcopy(self.network_config)},
            "network_data_format": {
                "inputs": {key: value.to_dict() for key, value in self.inputs.items()},
                "outputs": {key: value.to_dict() for key, value in self.outputs.items()},
            },
            "task": None if self.task is None else self.task.to_dict(),
            "training": copy.deepcopy(self.training),
            "training_data": copy.deepcopy(self.training_data),
            "metrics": copy.deepcopy(self.metrics),
            "source": copy.deepcopy(self.source),
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], path: Optional[str] = None) -> ModelMetadata:
        """A schema-2 document (or a schema-1 one, migrated in memory); InputError naming ``path`` when it is
        neither."""
        if document.get("schema") != SCHEMA:
            document, _ = migrate(document, path)
        version = document.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(
                path, f"model metadata schema version {version!r}; this x2ct reads {SCHEMA_VERSION} (and 1)"
            )
        if document.get("kind") not in KINDS:
            raise InputError(path, f"unknown model kind {document.get('kind')!r}; this x2ct reads {', '.join(KINDS)}")
        try:
            weights = dict(document["weights"])
            network = dict(document["network"])
            formats = dict(document["network_data_format"])
            task = document.get("task")
            return cls(
                kind=str(document["kind"]),
                architecture=str(network["architecture"]),
                network_config=dict(network.get("config") or {}),
                inputs={k: TensorFormat.from_dict(v) for k, v in dict(formats["inputs"]).items()},
                outputs={k: TensorFormat.from_dict(v) for k, v in dict(formats["outputs"]).items()},
                sha256=weights.get("sha256"),
                weights_file=str(weights.get("file") or WEIGHTS_FILE),
                parameters=weights.get("parameters"),
                name=document.get("name"),
                version=str(document.get("version") or FIRST_VERSION),
                changelog=dict(document.get("changelog") or {}),
                x2ct_version=document.get("x2ct_version"),
                pytorch_version=document.get("pytorch_version"),
                task=None
                if task is None
                else TaskSpec(
                    name=str(task["name"]),
                    outputs=tuple(task["outputs"]),
                    thresholds={k: float(v) for k, v in dict(task.get("thresholds") or {}).items()},
                    threshold_rule=str(task.get("threshold_rule", "youden_j")),
                    threshold_split=str(task.get("threshold_split", "val")),
                ),
                training=dict(document.get("training") or {}),
                training_data=document.get("training_data"),
                metrics=document.get("metrics"),
                source=document.get("source"),
                path=path,
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(path, f"bad model metadata ({type(err).__name__}: {err})") from None


def read_document(meta_path: Path) -> Dict[str, Any]:
    """The JSON object of a ``model.json`` (InputError when missing or unreadable)."""
    if not meta_path.is_file():
        raise InputError(
            meta_path,
            "model metadata missing (a model is NAME.safetensors + NAME.json, or a folder with "
            "model.safetensors + model.json)",
        )
    try:
        document = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(meta_path, f"unreadable model metadata ({' '.join(str(err).split())})") from None
    if not isinstance(document, dict):
        raise InputError(meta_path, "model metadata must be a JSON object")
    return document


# ------------------------------------------------------------------------------------ schema 1 -> 2


Prose = Dict[str, str]
"""Explanations found in a schema-1 document, by field path ("training.losses"): they belong in the model card."""


def _take_prose(document: Dict[str, Any], keys: List[str], prefix: str, prose: Prose) -> None:
    for key in keys:
        value = document.pop(key, None)
        if isinstance(value, str) and value.strip():
            prose[f"{prefix}{key}"] = value


Formats = Tuple[Dict[str, TensorFormat], Dict[str, TensorFormat]]


def _generator_formats(old: Mapping[str, Any], prose: Prose) -> Formats:
    spec = dict(old.get("input") or {})
    _take_prose(spec, ["normalization", "preprocessing"], "input.", prose)
    grid = int(old.get("grid_size") or (old.get("hyperparameters") or {}).get("grid_size") or 128)
    size = int(spec.get("size", grid))
    geometry = {k: v for k, v in dict(spec.get("drr_geometry") or {}).items() if v is not None}
    preprocessing: Dict[str, Any] = {"normalization": MINMAX, "quantize_bits": spec.get("quantize_bits", 8)}
    if geometry:
        preprocessing["drr_geometry"] = geometry
    views = list(old.get("views") or [PA, LATERAL])
    inputs = {input_key(view): radiograph_input(input_key(view), size, preprocessing) for view in views}
    return inputs, {CT_KEY: ct_tensor(grid)}


def _classifier_formats(old: Mapping[str, Any]) -> Formats:
    sizes = dict(old.get("input_sizes") or {})
    inputs: Dict[str, TensorFormat] = {}
    for key in old.get("inputs") or []:
        size = int(sizes.get(key, 128))
        inputs[key] = ct_tensor(size) if key == CT_KEY else radiograph_input(key, size)
    return inputs, {"logits": logits(list(old.get("outputs") or []))}


def migrate(old: Mapping[str, Any], path: Optional[str] = None) -> Tuple[Dict[str, Any], Prose]:
    """(schema-2 document, prose) of a schema-1 ``model.json``: the same facts in the new fields; explanations
    (descriptions, rules in words, loss and optimiser sentences) are returned apart for the model card.
    InputError naming ``path`` for a document of neither schema."""
    kind = LEGACY_FORMATS.get(str(old.get("format")))
    if kind is None or old.get("format_version") != 1:
        found = f"schema {old.get('schema')!r}, format {old.get('format')!r}"
        raise InputError(path, f"not an x2ct model metadata file ({found})")
    doc = copy.deepcopy(dict(old))
    prose: Prose = {}
    training = dict(doc.get("training") or {})
    _take_prose(training, ["losses", "loss", "optimizer", "augmentation"], "training.", prose)
    training_data = doc.get("training_data")
    if isinstance(training_data, dict):
        training_data = dict(training_data)
        _take_prose(training_data, ["description", "held_out"], "training_data.", prose)
        if isinstance(training_data.get("build"), dict):
            build = training_data["build"] = dict(training_data["build"])
            _take_prose(build, list(BUILD_PROSE), "training_data.build.", prose)
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        metrics = dict(metrics)
        _take_prose(metrics, ["data", "selection"], "metrics.", prose)
    if "test_metrics" in doc:
        metrics = dict(metrics or {}, test=doc["test_metrics"])
    _take_prose(doc, ["intended_use", "task_description", "threshold_rule", "probability"], "", prose)
    task: Optional[TaskSpec] = None
    if kind == GENERATOR:
        inputs, outputs = _generator_formats(doc, prose)
        architecture, config = str(doc["architecture"]), dict(doc.get("hyperparameters") or {})
    else:
        inputs, outputs = _classifier_formats(doc)
        config = dict(doc.get("classifier_config") or {})
        architecture = str(doc.get("arch") or config.get("arch"))
        thresholds = {k: float(v) for k, v in dict(doc.get("thresholds") or {}).items()}
        task = TaskSpec(name=str(doc.get("task")), outputs=tuple(doc.get("outputs") or ()), thresholds=thresholds)
    new = ModelMetadata(
        kind=kind,
        architecture=architecture,
        network_config=config,
        inputs=inputs,
        outputs=outputs,
        sha256=doc.get("sha256"),
        weights_file=str(doc.get("weights_file") or WEIGHTS_FILE),
        parameters=doc.get("parameters"),
        name=doc.get("name"),
        version=FIRST_VERSION,
        changelog={FIRST_VERSION: "first release (metadata schema 1, migrated to schema 2)"},
        x2ct_version=training.get("x2ct_version"),
        pytorch_version=training.get("torch_version"),
        training=training,
        training_data=training_data,
        metrics=metrics,
        source=doc.get("source"),
        task=task,
    ).to_dict()
    return new, prose


MODEL_CARD = "MODEL_CARD.md"
"""The model card beside a folder model's ``model.json`` (``<name>.md`` beside ``<name>.json`` otherwise)."""


@dataclass(frozen=True)
class Migration:
    """What :func:`migrate_file` did to one model: ``metadata`` (the ``model.json``), whether it was rewritten,
    and the model card that received the schema-1 prose (None when there was none)."""

    metadata: Path
    migrated: bool
    card: Optional[Path] = None


def _card_path(meta_path: Path) -> Path:
    return meta_path.parent / MODEL_CARD if meta_path.name == METADATA_FILE else meta_path.with_suffix(".md")


def _card_section(prose: Prose) -> str:
    note = "These explanations were fields of this model's schema-1 `model.json`; `x2ct migrate-model` moved them here."
    lines = ["", "## Notes from the earlier metadata", "", note, ""]
    lines += [f"- **{key}**: {' '.join(text.split())}" for key, text in prose.items()]
    return "\n".join(lines) + "\n"


def migrate_file(path: Path) -> Migration:
    """Rewrite a schema-1 ``model.json`` (a model folder, its ``.json`` or its ``.safetensors``) as schema 2, its
    prose appended to the model card; a schema-2 one is left alone. The weights are not touched (their
    sha256 is checked first and stays valid). InputError naming the file for anything else."""
    from ..atomic import sha256_file, write_text_atomic

    path = Path(path)
    meta_path = path / METADATA_FILE if path.is_dir() else path.with_suffix(".json")
    document = read_document(meta_path)
    if document.get("schema") == SCHEMA:
        ModelMetadata.from_dict(document, str(meta_path))
        return Migration(meta_path, migrated=False)
    new, prose = migrate(document, str(meta_path))
    checked = ModelMetadata.from_dict(new, str(meta_path))
    weights = meta_path.parent / checked.weights_file
    if not weights.is_file() or sha256_file(weights) != checked.sha256:
        raise InputError(weights, "missing, or its sha256 differs from the metadata's: not migrated")
    card = None
    if prose:
        card = _card_path(meta_path)
        title = f"# Model card: {checked.name or meta_path.parent.name}\n"
        before = card.read_text(encoding="utf-8") if card.is_file() else title
        write_text_atomic(card, before.rstrip("\n") + "\n" + _card_section(prose))
    write_text_atomic(meta_path, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return Migration(meta_path, migrated=True, card=card)
