"""The one metadata schema of x2ct models (x2ct.models.metadata): schema 2 round trips, schema-1 files keep
loading, ``x2ct migrate-model`` rewrites them (prose into the model card, weights untouched), and the
bundled models are on schema 2 without prose in machine fields.

Testing/data/schema1/ holds the ``model.json`` files of x2ct-demo-singleview 1.0.0 (X2CT-GAN) and of the first
x2ct-demo-tb as they were written before schema 2, with their weights (``*_model.safetensors``, unchanged) and
the generator's schema-2 ``model.json`` as bundled before version 2.0.0 (``generator_model_schema2.json``).
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import torch

from x2ct.classify.checkpoint import load_classifier
from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.inference.models import input_spec_from_metadata
from x2ct.models import load_generator
from x2ct.models.checkpoints import models_dir
from x2ct.models.metadata import SCHEMA, SCHEMA_VERSION, ModelMetadata, migrate
from x2ct.resources import resources_dir

SCHEMA1 = Path(__file__).resolve().parent / "data" / "schema1"
PROSE_KEYS = {"description", "intended_use", "task_description", "probability", "losses", "loss", "optimizer",
              "augmentation", "held_out", "selection", "ct_convention", "xray_convention", "synthetic_drrs",
              "body_mask", "input_spec", "output_order", "intensity"}  # fmt: skip
"""Field names that held sentences in schema 1; none may appear in a schema-2 document."""


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def prose_fields(document: Any, parent: str = "") -> Iterator[str]:
    """The keys of :data:`PROSE_KEYS` that hold text anywhere in a JSON document, except in ``training.config``
    (the trainer's settings as given: ``optimizer`` is a setting there, e.g. "nadam", not a sentence)."""
    if isinstance(document, dict):
        for key, value in document.items():
            if parent == "training" and key == "config":
                continue
            if key in PROSE_KEYS and isinstance(value, (str, dict)):
                yield key
            yield from prose_fields(value, key)
    elif isinstance(document, list):
        for value in document:
            yield from prose_fields(value)


def old_model(tmp_path: Path, kind: str) -> Path:
    """A model folder with the old weights and their schema-1 ``model.json`` and model card."""
    folder = tmp_path / kind
    folder.mkdir()
    shutil.copy(SCHEMA1 / f"{kind}_model.safetensors", folder / "model.safetensors")
    shutil.copy(SCHEMA1 / f"{kind}_model.json", folder / "model.json")
    (folder / "MODEL_CARD.md").write_text("# Model card: old\n\nSome words.\n", encoding="utf-8")
    return folder


def test_schema_2_round_trips_through_json():
    for folder in (models_dir() / "x2ct-demo-biplanar", resources_dir() / "Classifiers" / "x2ct-demo-pe"):
        document = json.loads((folder / "model.json").read_text())
        metadata = ModelMetadata.from_dict(document)
        assert metadata.to_dict() == document
        assert ModelMetadata.from_dict(json.loads(json.dumps(metadata.to_dict()))) == metadata


def test_bundled_models_are_on_schema_2_without_prose_fields():
    folders = [*sorted((resources_dir() / "Models").iterdir()), *sorted((resources_dir() / "Classifiers").iterdir())]
    assert len(folders) >= 6
    for folder in folders:
        document = json.loads((folder / "model.json").read_text())
        assert (document["schema"], document["schema_version"]) == (SCHEMA, SCHEMA_VERSION), folder
        assert not list(prose_fields(document)), (folder, list(prose_fields(document)))
        assert document["version"] in document["changelog"] and document["name"] == folder.name
        assert (folder / "MODEL_CARD.md").is_file()


def test_a_schema_1_generator_still_loads_as_its_migrated_self(tmp_path):
    folder = old_model(tmp_path, "generator")
    model = load_generator(folder)
    schema2 = tmp_path / "schema2"  # the same weights as bundled (1.0.0) with their schema-2 model.json
    schema2.mkdir()
    shutil.copy(SCHEMA1 / "generator_model.safetensors", schema2 / "model.safetensors")
    shutil.copy(SCHEMA1 / "generator_model_schema2.json", schema2 / "model.json")
    bundled = load_generator(schema2)
    assert model.metadata.kind == "generator" and model.metadata.views == ("PA",)
    assert input_spec_from_metadata(model.metadata) == input_spec_from_metadata(bundled.metadata)
    assert model.metadata.sha256 == bundled.metadata.sha256
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bundled.state_dict().items())
    document, prose = migrate(json.loads((SCHEMA1 / "generator_model.json").read_text()))
    assert document == json.loads((SCHEMA1 / "generator_model_schema2.json").read_text())
    assert "training.losses" in prose and "input.preprocessing" in prose and "intended_use" in prose


def test_migrate_model_rewrites_the_json_and_moves_the_prose_to_the_card(tmp_path):
    folders = [old_model(tmp_path, "generator"), old_model(tmp_path, "classifier")]
    weights = {folder: (folder / "model.safetensors").read_bytes() for folder in folders}
    code, stdout, stderr = run_cli("migrate-model", *folders)
    assert code == 0 and stdout.count("rewritten as metadata schema 2") == 2, stderr
    for folder in folders:
        document = json.loads((folder / "model.json").read_text())
        assert document["schema_version"] == 2 and not list(prose_fields(document))
        assert (folder / "model.safetensors").read_bytes() == weights[folder]
        card = (folder / "MODEL_CARD.md").read_text()
        assert card.startswith("# Model card: old\n\nSome words.\n") and "## Notes from the earlier metadata" in card
    card = (folders[1] / "MODEL_CARD.md").read_text()
    assert "- **task_description**: tuberculosis present" in card and "- **threshold_rule**: Youden" in card
    net, metadata = load_classifier(folders[1])
    old = json.loads((SCHEMA1 / "classifier_model.json").read_text())
    assert metadata.thresholds() == old["thresholds"] and metadata.input_keys == tuple(old["inputs"])
    assert {k: metadata.input_size(k) for k in metadata.input_keys} == old["input_sizes"]
    assert metadata.ct_source == old["training_data"]["ct_source"]["generator"]["model"]
    before = (folders[0] / "MODEL_CARD.md").read_text()
    code, stdout, _ = run_cli("migrate-model", folders[0])
    assert code == 0 and "already metadata schema 2" in stdout and (folders[0] / "MODEL_CARD.md").read_text() == before


def test_bad_metadata_is_one_line(tmp_path):
    folder = old_model(tmp_path, "generator")
    document = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(dict(document, format_version=7)))
    with pytest.raises(InputError, match="not an x2ct model metadata file"):
        load_generator(folder)
    migrated, _ = migrate(document)
    (folder / "model.json").write_text(json.dumps(dict(migrated, schema_version=3)))
    with pytest.raises(InputError, match="schema version 3; this x2ct reads 2"):
        load_generator(folder)
    (folder / "model.json").write_text(json.dumps(dict(migrated, kind="classifier")))
    with pytest.raises(InputError, match="holds a classifier, not a generator"):
        load_generator(folder)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(weights))
    (folder / "model.json").write_text(json.dumps(document))
    code, _, stderr = run_cli("migrate-model", folder)
    assert code == 2 and stderr.startswith("x2ct: error: ") and "not migrated" in stderr
    assert json.loads((folder / "model.json").read_text()) == document  # left as it was
