"""Data-parallel training under torchrun: 2 CPU processes with gloo, a few steps at tiny sizes.

* the two replicas hold the same weights (bit for bit) after training;
* N ranks with batch b equal one process with batch N·b: checked in double precision (the networks
  and data in float64, through Testing/ddp_worker.py), where the split of a batch changes the
  rounding of the gradient sums by about 1e-14; the tolerance on the exported weights is 1e-6
  (measured: about 3e-8, Adam's normalisation enlarging the rounding of near-zero gradients);
* a run killed (SIGKILL of the whole process group) and started again ends with the same model
  file, byte for byte, as an uninterrupted one, for the generator and (stopped by max_steps, then
  --resume) the classifier;
* a rank that fails stops the job with its one-line error, not a hang; a run is resumed only by as
  many processes as trained it.

Each torchrun launch costs a few seconds (two interpreters importing torch); the tests keep them few.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

import pytest
import torch
from safetensors.torch import load_file

from x2ct.cli import main
from x2ct.distributed import Context, split_evenly
from x2ct.train.engine import epoch_order

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no torch.distributed gloo backend",
)

TESTING = Path(__file__).resolve().parent
GENERATOR = [
    "grid_size=64",
    "width=0.0625",
    "ndf=4",
    "views=1",
    "epochs_constant=1",
    "epochs_decay=1",
    "threads=1",
    "device=cpu",
    "progress=false",
    "tensorboard=off",
    "seed=3",
    "val_every_epochs=0",
    "sample_every_epochs=0",
    "keep_every_epochs=0",
]
"""4 training cases; with batch 1 on each of 2 ranks (global batch 2): 2 steps per epoch, 4 in all."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(args: Sequence[object], nproc: int = 2) -> List[str]:
    """The command line starting ``args`` (a module invocation or a script) on ``nproc`` local CPU ranks."""
    port = str(free_port())
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", port, *map(str, args)]  # fmt: skip


def run(command: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, env=environment(), timeout=timeout)


def cli_args(command: str, *settings: str) -> List[str]:
    out: List[str] = ["-m", "x2ct.cli", command]
    for item in settings:
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """5 synthetic 64³ cases of the real CT: 4 train, 1 val."""
    out = tmp_path_factory.mktemp("ddp_data") / "data"
    build = ["build-dataset", "--synthetic-from", "sample", "--cases", "5", "--seed", "7", "--size", "64"]
    assert main([*build, str(out)]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["split"] for r in rows].count("train") == 4
    return out


def replicas(folder: Path) -> List[dict]:
    return [load_file(str(folder / f"replica_{rank}.safetensors")) for rank in (0, 1)]


def test_two_ranks_equal_one_process_with_their_global_batch(data, tmp_path):
    settings = [*GENERATOR, "dropout=0", "epochs_decay=0"]  # 2 steps: double-precision 3D convolutions are slow
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    worker = TESTING / "ddp_worker.py"
    done = run(torchrun([worker, "generator", data, ddp, "--float64", *settings, "batch_size=1"]))
    assert done.returncode == 0, done.stderr[-3000:]
    done = run([sys.executable, str(worker), "generator", str(data), str(single), "--float64", *settings,
                "batch_size=2"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = replicas(ddp)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # replicas identical
    one = load_file(str(single / "replica_0.safetensors"))
    assert one[next(iter(one))].dtype in (torch.float64, torch.int64)
    difference = max(float((one[k].double() - rank0[k].double()).abs().max()) for k in one)
    assert difference <= 1e-6, difference
    trained = load_file(str(ddp / "model" / "model.safetensors"))  # rank 0 exported what it trained
    assert all(torch.equal(trained[k], rank0[f"G.{k}"]) for k in trained)
    meta = json.loads((ddp / "model" / "model.json").read_text())["training"]
    assert (meta["world_size"], meta["batch_per_rank"], meta["global_batch"], meta["steps"]) == (2, 1, 2, 2)


def wait_for_checkpoint(run_folder: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    last = run_folder / "checkpoints" / "last.pt"
    start = time.monotonic()
    while not last.is_file():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() - start < timeout, "no checkpoint"
        time.sleep(0.2)


def test_generator_killed_and_restarted_under_torchrun_ends_as_an_uninterrupted_run(data, tmp_path):
    settings = [*GENERATOR, "batch_size=1", "checkpoint_every_steps=1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    command = lambda out: torchrun([*cli_args("train-generator", *settings), "--data", data, "-o", out])  # noqa: E731
    done = run(command(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps") == 1, done.stdout  # rank 0 reports, rank 1 stays quiet

    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(), start_new_session=True)  # fmt: skip
    try:
        wait_for_checkpoint(killed, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, without warning
        process.wait(timeout=60)
    done = run(command(killed))
    assert done.returncode == 0, done.stderr[-3000:]
    model = "model/model.safetensors"
    assert (killed / model).read_bytes() == (straight / model).read_bytes()
    assert (killed / "scalars.csv").read_text() == (straight / "scalars.csv").read_text()

    # the run belongs to 2 processes: one process may not resume it
    code = main(["train-generator", "--data", str(data), "-o", str(killed), *sum((["--set", s] for s in settings), [])])
    assert code == 2


def test_classifier_resumed_under_torchrun_ends_as_an_uninterrupted_run(tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("ddp_classify") / "data"
    build = ["build-dataset", "--synthetic-from", "sample", "--cases", "12", "--seed", "5", "--size", "64"]
    assert main([*build, "--drr-size", "32", str(data)]) == 0
    splits = {"train": range(0, 4), "val": range(4, 8), "test": range(8, 12)}
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "split", "tb_present"])
        for split, indices in splits.items():
            writer.writerows([rows[i]["case_id"], split, rows[i]["tb_present"]] for i in indices)
    densenet = '{"init_features": 4, "growth_rate": 4, "block_config": [1, 1]}'
    settings = ["size_xray=32", "epochs=3", "batch_size=2", "progress=false", "tensorboard=off", "seed=4",
                "threads=1", "device=cpu", f"arch_options={densenet}"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def command(out: Path, *extra: str) -> List[str]:
        args = cli_args("train-classifier", *settings, *extra)
        return torchrun([*args, "--data", data, "--labels", labels, "--task", "tb", "--arch", "densenet2d", "-o", out])

    done = run(command(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    done = run(command(resumed, "max_steps=1"))
    assert done.returncode == 0 and "stopped at step 1" in done.stdout, done.stderr[-3000:]
    done = run([*command(resumed), "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    model = "model/model.safetensors"
    assert (resumed / model).read_bytes() == (straight / model).read_bytes()
    meta = json.loads((resumed / "model" / "model.json").read_text())
    assert meta["task"] == json.loads((straight / "model" / "model.json").read_text())["task"]
    assert (meta["training"]["world_size"], meta["training"]["global_batch"]) == (2, 4)


def test_a_failing_rank_stops_the_job_with_its_error(data, tmp_path):
    """Rank 1 meets an unreadable case file in step 2 while rank 0 waits for it in the gradient reduction."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    rows = [r for r in csv.DictReader(open(copy / "manifest.csv")) if r["split"] == "train"]
    order = epoch_order(3, 0, len(rows)).tolist()
    second_batch = order[2:4]
    rank1 = split_evenly(second_batch, Context(rank=1, world_size=2))[0]
    broken, case_id = copy / rows[rank1]["path"], rows[rank1]["case_id"]
    broken.write_bytes(broken.read_bytes()[:100])
    start = time.monotonic()
    command = torchrun([*cli_args("train-generator", *GENERATOR, "batch_size=1"), "--data", copy, "-o", tmp_path / "r"])
    done = run(command, timeout=240)
    assert time.monotonic() - start < 200
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("x2ct: error: ")]
    mine = [line for line in ours if line.startswith("x2ct: error: rank 1: ")]
    assert any(case_id in line and "unreadable" in line for line in mine), ours
    assert "Traceback" not in "\n".join(ours)
