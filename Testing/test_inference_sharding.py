"""``x2ct predict --manifest`` and ``x2ct synthesize-ct`` under torchrun: two CPU processes (gloo) share the cases.

Each test runs the command once in one process and once as ``torchrun --nproc_per_node 2``, both on
one thread, and checks that the merged table lists every case once and that the outputs are the
same files with the same voxels. Models are tiny random generators (test_predict.py); each torchrun
launch costs a few seconds, so there are only these two.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
import torch

from test_predict import LATERAL_PNG, PA_PNG, make_resources
from x2ct.models import GeneratorConfig, X2CTSingleView, save_generator
from x2ct.resources import RESOURCES_ENV

TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def x2ct(args: List[str], processes: int, env: Dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m x2ct.cli ARGS`` in one process, or under ``torch.distributed.run`` with ``processes`` ranks."""
    launcher = [sys.executable, "-m", "x2ct.cli"]
    if processes > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(_free_port()), "-m", "x2ct.cli",
        ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    result = subprocess.run(
        [*launcher, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=TIMEOUT_S,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_volumes(single: Path, sharded: Path) -> None:
    """The same ``*/synthetic_ct.nrrd`` files under both folders, voxel for voxel."""
    files = sorted(p.relative_to(single) for p in single.glob("*/synthetic_ct.nrrd"))
    assert files and files == sorted(p.relative_to(sharded) for p in sharded.glob("*/synthetic_ct.nrrd"))
    for name in files:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(root / name))) for root in (single, sharded))
        np.testing.assert_array_equal(a, b, err_msg=str(name))


def test_predict_manifest_shards_cases_across_two_processes(tmp_path: Path):
    (tmp_path / "Resources").mkdir()
    resources = make_resources(tmp_path / "Resources")
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "pa", "lateral"])
        writer.writerow(["both-1", PA_PNG, LATERAL_PNG])
        writer.writerow(["pa-1", PA_PNG, ""])
        writer.writerow(["broken", tmp_path / "missing.png", ""])
        writer.writerow(["both-2", PA_PNG, LATERAL_PNG])
        writer.writerow(["pa-2", PA_PNG, ""])
    env = {RESOURCES_ENV: str(resources)}
    command = ["predict", "--manifest", str(manifest), "--device", "cpu", "-o"]
    single = x2ct([*command, str(tmp_path / "single")], 1, env)
    sharded = x2ct([*command, str(tmp_path / "sharded")], 2, env)

    assert sharded.stdout.count("predicted 4, skipped 0") == 1, sharded.stdout  # rank 0 reports, once
    assert sharded.stderr.count("case broken failed") == 1, sharded.stderr  # by the rank that had it
    rows = read_rows(tmp_path / "sharded" / "batch_summary.csv")
    assert [r["case_id"] for r in rows] == ["both-1", "pa-1", "broken", "both-2", "pa-2"]  # each once, in order
    assert rows == read_rows(tmp_path / "single" / "batch_summary.csv")
    assert "predicted 4" in single.stdout
    assert_same_volumes(tmp_path / "single", tmp_path / "sharded")


def test_synthesize_ct_shards_batches_across_two_processes(tmp_path: Path):
    data = tmp_path / "data"
    build = ["build-dataset", "--synthetic-from", "sample", "--cases", "5", "--seed", "3", "--size", "64"]
    x2ct([*build, "--drr-size", "32", str(data)], 1, {})
    torch.manual_seed(0)
    generator = tmp_path / "gen"
    save_generator(X2CTSingleView(GeneratorConfig(grid_size=64, width=1 / 16)), generator)
    command = ["synthesize-ct", "--model", str(generator), "--data", str(data), "--batch-size", "2", "--device", "cpu"]
    x2ct([*command, "-o", str(tmp_path / "single")], 1, {})
    sharded = x2ct([*command, "-o", str(tmp_path / "sharded")], 2, {})

    assert sharded.stdout.count("synthesized 5 CTs") == 1, sharded.stdout
    rows = read_rows(tmp_path / "sharded" / "manifest.csv")
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in read_rows(data / "manifest.csv")]
    for name in ("manifest.csv", "synthesis.json"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    assert_same_volumes(tmp_path / "single", tmp_path / "sharded")
