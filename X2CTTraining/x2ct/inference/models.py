"""Loading the models inference runs: generators (bundled name, official .pth, x2ct model) and classifiers.

:func:`load_model` and :func:`select_model` give a :class:`~x2ct.inference.types.LoadedModel` with its
:class:`~x2ct.inference.types.InputSpec` (:func:`input_spec_from_metadata`);
:func:`load_classifiers` gives :class:`~x2ct.inference.types.LoadedClassifier` s (bundled ones live in
``Resources/Classifiers``); :class:`ModelCache` loads each once for a batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import torch

from ..classify.checkpoint import load_classifier
from ..drr_geometry import DRRGeometry
from ..errors import InputError, PathLike
from ..models.checkpoints import ARCHITECTURES, bundled_model_names, load_generator, models_dir, resolve_device
from ..models.metadata import METADATA_FILE, ModelMetadata, read_document
from ..resources import bundled_names, resources_dir
from ..views import LATERAL, LATERAL_KEY, PA_KEY
from .types import InputSpec, LoadedClassifier, LoadedModel

if TYPE_CHECKING:
    from .style import LoadedStyle

DEFAULT_BIPLANAR = "x2ct-demo-biplanar"
"""Bundled model used when a lateral is given and no ``--model``."""
DEFAULT_SINGLEVIEW = "x2ct-demo-singleview"
"""Bundled model used for a PA alone and no ``--model``."""

CLASSIFIERS_FOLDER = "Classifiers"
"""Folder of ``Resources`` that holds the bundled classifiers (one sub-folder per model)."""


# --------------------------------------------------------------------------------------------------
# Generators


def input_spec_from_metadata(metadata: ModelMetadata) -> InputSpec:
    """The :class:`InputSpec` of a generator from its metadata: the PA input's size, and the DRR geometry
    ({"sad_mm", "sid_mm", "detector_mm", "drr_size"}) and ``quantize_bits`` of its training radiographs
    (``network_data_format.inputs.pa.preprocessing``). A model that records no geometry (official
    weights) gets the official one, 8 bits and ``drr_size`` = its input size."""
    size = metadata.input_size(PA_KEY)
    preprocessing = metadata.inputs[PA_KEY].preprocessing
    geo = {k: v for k, v in dict(preprocessing.get("drr_geometry") or {}).items() if v is not None}
    geometry = DRRGeometry(
        sad_mm=float(geo.get("sad_mm", DRRGeometry.sad_mm)),
        sid_mm=float(geo.get("sid_mm", DRRGeometry.sid_mm)),
        detector_mm=float(geo.get("detector_mm", DRRGeometry.detector_mm)),
    )
    bits = preprocessing.get("quantize_bits", 8)
    return InputSpec(
        size=size,
        geometry=geometry,
        drr_size=int(geo.get("drr_size", size)),
        quantize_bits=int(bits) if bits else None,
    )


def _bundled_metadata(name: str) -> Optional[ModelMetadata]:
    """The metadata of the bundled model called ``name`` (Resources/Models/<name>/), or None when there is none."""
    if name not in bundled_model_names():
        return None
    path = models_dir() / name / METADATA_FILE
    return ModelMetadata.from_dict(read_document(path), str(path))


def is_stochastic_bundled(name: str) -> bool:
    """Whether the bundled generator ``name`` is stochastic, i.e. sampled K times with an SD map (its
    architecture's network has ``stochastic = True``: latent diffusion); False for other or unknown names."""
    metadata = _bundled_metadata(name)
    network = ARCHITECTURES.get(metadata.architecture) if metadata is not None else None
    return network is not None and bool(getattr(network[0], "stochastic", False))


def select_model(model: Optional[str], have_lateral: bool) -> str:
    """The model to load for a case: ``model`` as given, or the bundled default for the views at hand.

    A bundled biplanar model named for a PA-only case is swapped for its single-view sibling (the
    same name with "biplanar" -> "singleview") when one is bundled; otherwise InputError.
    """
    if model is None:
        return DEFAULT_BIPLANAR if have_lateral else DEFAULT_SINGLEVIEW
    metadata = _bundled_metadata(model)
    if not have_lateral and metadata is not None and LATERAL in metadata.views:
        sibling = model.replace("biplanar", "singleview")
        if sibling != model and _bundled_metadata(sibling) is not None:
            return sibling
        raise InputError(
            model, "is a biplanar (+B) model and needs --lateral; no matching single-view model is bundled"
        )
    return model


def load_model(name_or_path: str, device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Load a generator (bundled name, official .pth or x2ct checkpoint) for inference on ``device``.

    Raises InputError naming the model when it cannot be found or loaded (x2ct.models.checkpoints).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    module = load_generator(name_or_path, device=dev)
    metadata: ModelMetadata = module.metadata
    return LoadedModel(
        module=module,
        name=str(metadata.name or Path(str(name_or_path)).name),
        path=str(metadata.path or name_or_path),
        architecture=module.architecture,
        views=tuple(module.views),
        sha256=metadata.sha256,
        spec=input_spec_from_metadata(metadata),
        metadata=metadata,
        device=dev,
    )


# --------------------------------------------------------------------------------------------------
# Classifiers


def classifiers_dir() -> Path:
    """``Resources/Classifiers``."""
    return resources_dir() / CLASSIFIERS_FOLDER


def bundled_classifier_names() -> List[str]:
    """Names of the bundled classifiers (folders of ``Resources/Classifiers`` holding a ``model.json``)."""
    return bundled_names(CLASSIFIERS_FOLDER)


def load_classifiers(
    names: Optional[Sequence[PathLike]] = None, device: Union[str, torch.device] = "cpu"
) -> List[LoadedClassifier]:
    """Load classifiers by bundled name or path (folder, ``model.json`` or training run); ``None``: all bundled."""
    chosen = bundled_classifier_names() if names is None else list(names)
    loaded = []
    for item in chosen:
        bundled = classifiers_dir() / str(item) if str(item) in bundled_classifier_names() else None
        path = bundled if bundled is not None else Path(item)
        if bundled is None and not path.exists():
            known = ", ".join(bundled_classifier_names()) or "none"
            raise InputError(path, f"no such classifier (bundled ones: {known})")
        net, metadata = load_classifier(path, device)
        loaded.append(LoadedClassifier(name=path.name if bundled is None else str(item), net=net, metadata=metadata))
    return loaded


class ModelCache:
    """Loaded generators by choice, the classifiers and style models, so a batch loads each model once.

    ``device``: "auto", "cpu", "cuda" or a torch device. ``classifiers``: names or paths
    (:func:`load_classifiers`); ``None`` = every bundled classifier, an empty sequence = none.
    """

    def __init__(
        self, device: Union[str, torch.device] = "auto", classifiers: Optional[Sequence[PathLike]] = None
    ) -> None:
        self.device = resolve_device(device)
        self._models: Dict[str, LoadedModel] = {}
        self._classifier_choice = None if classifiers is None else list(classifiers)
        self._classifiers: Optional[List[LoadedClassifier]] = None
        self._styles: Dict[str, LoadedStyle] = {}

    def classifiers(self, have_lateral: bool) -> List[LoadedClassifier]:
        """The classifiers for a case. Bundled ones that need a lateral are left out of a PA-only case; a
        classifier the user named that needs a lateral is an InputError for such a case."""
        if self._classifiers is None:
            self._classifiers = load_classifiers(self._classifier_choice, self.device)
        if have_lateral:
            return list(self._classifiers)
        needs_lateral = [c for c in self._classifiers if LATERAL_KEY in c.inputs]
        if needs_lateral and self._classifier_choice is not None:
            raise InputError(None, f"classifier {needs_lateral[0].name} needs a lateral radiograph (--lateral)")
        return [c for c in self._classifiers if LATERAL_KEY not in c.inputs]

    def get(self, model: Optional[str], have_lateral: bool) -> LoadedModel:
        """The model for a case: :func:`select_model` of ``model`` given whether a lateral is present."""
        choice = select_model(model, have_lateral)
        if choice not in self._models:
            self._models[choice] = load_model(choice, self.device)
        return self._models[choice]

    def style(self, name_or_path: str) -> LoadedStyle:
        """The style model ``name_or_path`` (bundled name or path, :func:`x2ct.inference.style.load_style`;
        InputError for a missing or bad one), loaded once."""
        if name_or_path not in self._styles:
            from .style import load_style

            self._styles[name_or_path] = load_style(name_or_path, self.device)
        return self._styles[name_or_path]
