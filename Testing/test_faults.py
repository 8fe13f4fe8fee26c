"""Faults around a run (issue #13 item 7): killed runs, their leftovers, two runs into one output, unsafe pickles.

* a SIGKILLed ``build-dataset --workers 2`` takes its worker processes and the multiprocessing resource
  tracker with it;
* the temporaries a killed run leaves (``.<name>.<8 characters>.partial…``, a half-replaced folder) are
  removed by the next run into the same output, and nothing else is;
* a second run into an output that a run holds is refused in one line; a killed holder blocks nothing;
* a ``.pt`` that pickles a class is refused in one line that never repeats torch's "weights_only=False" advice.

Predictions use the tiny random models of test_predict.py; training uses a 3-case 64³ synthetic data set.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from test_predict import LATERAL_PNG, PA_PNG
from x2ct.atomic import LOCK_SUFFIX, output_lock, remove_leftovers
from x2ct.cli import main
from x2ct.models.checkpoints import UNSAFE_PICKLE, load_weights_only
from x2ct.train.engine import load_checkpoint
from x2ct.train.generator import CHECKPOINT_FORMAT

TRAIN = ["grid_size=64", "width=0.0625", "ndf=4", "batch_size=3", "epochs_constant=1", "epochs_decay=0",
         "threads=1", "device=cpu", "val_split=train", "progress=false", "tensorboard=off"]  # fmt: skip
"""One training step on the 3 cases."""

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "chest_ct.nii.gz"
SYNTHETIC = ("--synthetic-from", SAMPLE_CT,
             "--labels", REPO / "Resources" / "SampleData" / "chest_labels.nii.gz", "--size", "64")  # fmt: skip
"""build-dataset options for synthetic 64³ cases of the real CT (named in full: the tiny models' fixture
points the bundled resources elsewhere)."""

RANDOM = "q1w2e3r4"
"""Eight characters as tempfile draws them (a-z, 0-9, _): the random part of a temporary's name."""


class Gadget:
    """A class of this test module: a pickle of one names it, so weights-only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def run_cli(*args: object) -> Tuple[int, str, str]:
    """``x2ct ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_error_line(code: int, stderr: str) -> str:
    """The single ``x2ct: error:`` line of a refused command (exit status 2, no traceback)."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("x2ct: error: "), (code, stderr)
    assert "Traceback" not in stderr
    return lines[0]


def digests(root: Path) -> Dict[str, str]:
    """sha256 of every file under ``root`` by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def train_args(data: Path, out: Path) -> List[str]:
    args = ["train-generator", "--data", str(data), "-o", str(out)]
    for item in TRAIN:
        args += ["--set", item]
    return args


def predict_args(out: Path) -> List[str]:
    return ["predict", "--pa", str(PA_PNG), "--lateral", str(LATERAL_PNG), "-o", str(out), "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults_data") / "data"
    code, _, stderr = run_cli("build-dataset", *SYNTHETIC, "--cases", "3", out)
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A finished one-step training run."""
    out = tmp_path_factory.mktemp("faults_run") / "run"
    code, _, stderr = run_cli(*train_args(dataset, out))
    assert code == 0, stderr
    return out


# ------------------------------------------------------------------------------------------ workers


def _children(pid: int) -> List[int]:
    """Direct children of ``pid`` from /proc (every thread's list); none once it is gone."""
    found: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def _descendants(pid: int) -> List[int]:
    return [d for c in _children(pid) for d in (c, *_descendants(c))]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _kill(pids: List[int]) -> None:
    """SIGKILL what a failed test leaves running of the processes it started."""
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _wait_for(condition, what: str, limit_s: float = 300.0) -> None:
    """Poll ``condition`` every 0.1 s; fail naming ``what`` if it never holds (a generous limit, not a timing)."""
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to list child processes (Linux)")
def test_killed_build_takes_its_workers_and_resource_tracker_with_it(tmp_path: Path):
    out = tmp_path / "data"
    cases = 8
    log = open(tmp_path / "stderr.txt", "wb")
    command = [sys.executable, "-m", "x2ct.cli", "build-dataset", *SYNTHETIC, "--cases", cases, "--workers", "2", out]
    main_process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=log)
    family: List[int] = []
    try:
        finished = lambda: list(out.glob("*/ct_xray_data.h5"))  # noqa: E731
        workers = lambda: [p for p in _descendants(main_process.pid) if "spawn_main" in _cmdline(p)]  # noqa: E731
        _wait_for(lambda: len(workers()) == 2 and finished(), "two workers and a first finished case")
        family = _descendants(main_process.pid)
        assert any("resource_tracker" in _cmdline(p) for p in family)
        at_kill = len(finished())
        main_process.send_signal(signal.SIGKILL)
        main_process.wait()
        _wait_for(lambda: not any(_running(p) for p in family), "the workers and the resource tracker to end", 60.0)
    finally:
        _kill([main_process.pid, *family])
        main_process.wait()
        log.close()
    # Nothing runs any more, so no case can appear later; at most the two in the workers' hands got finished.
    assert at_kill <= len(finished()) <= at_kill + 2 < cases
    assert not (out / "manifest.csv").exists()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to list child processes (Linux)")
def test_a_rank_in_its_own_session_ends_when_its_launcher_is_killed(tmp_path: Path):
    # torchrun starts each rank in a session of its own, so killing torchrun's process group misses them.
    rank = "import time\nfrom x2ct.lifetime import end_with_parent\nend_with_parent(kernel_signal=False)\n" \
           "print('watching', flush=True)\ntime.sleep(600)\n"  # fmt: skip
    launcher_code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {rank!r}], " \
                    "start_new_session=True).wait()\n"  # fmt: skip
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True)
    ranks: List[int] = []
    try:
        assert launcher.stdout is not None and launcher.stdout.readline().strip() == "watching"
        ranks = _children(launcher.pid)
        assert len(ranks) == 1 and _running(ranks[0])
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        _wait_for(lambda: not _running(ranks[0]), "the rank to end", 60.0)
    finally:
        _kill([launcher.pid, *ranks])
        launcher.wait()


# ---------------------------------------------------------------------------------------- leftovers


def test_remove_leftovers_takes_only_x2ct_names_of_unheld_outputs(tmp_path: Path):
    out = tmp_path / "out"
    (out / "c1").mkdir(parents=True)
    (out / "c2").mkdir()
    ours = [
        tmp_path / f".out.{RANDOM}.partial",  # atomic_dir of out itself
        out / f".c1.{RANDOM}.partial",  # atomic_dir of a case folder
        out / f".c1.{RANDOM}.replaced",  # replaced, and c1 exists: the old copy goes
        out / f".manifest.{RANDOM}.partial.csv",  # atomic_path of out/manifest.csv
        out / "c2" / f".ct_xray_data.{RANDOM}.partial.h5",  # atomic_path one level down
        out / "c2" / f".a.nii.{RANDOM}.partial.nii.gz",  # a two-ending name
        out / f".gone{LOCK_SUFFIX}",  # lock file of a killed run
    ]
    users = [
        tmp_path / f".other.{RANDOM}.partial",  # belongs to another output beside out
        out / "notes.partial",
        out / f"c1.{RANDOM}.partial",  # not hidden
        out / ".c1.Q1W2E3R4.partial",  # not tempfile's characters
        out / ".c1.q1w2.partial",  # too short
        out / ".backup.old",
        out / "c2" / "ct_xray_data.h5",
    ]
    for path in ours + users:
        path.mkdir() if path.suffix in (".partial", ".replaced") else path.write_text("x")
    (out / f".c1.{RANDOM}.partial" / "inside.nrrd").write_text("half")
    (out / ".c3.abcdefgh.replaced").mkdir()  # replaced and never replaced: put back as c3
    (out / ".c3.abcdefgh.replaced" / "summary.json").write_text("{}")
    held = out / ".c4.abcdefgh.partial"  # c4 is being written by a running x2ct: left alone
    held.mkdir()
    with output_lock(out / "c4"), output_lock(out):
        remove_leftovers(out)
        assert held.is_dir()
    assert not any(p.exists() for p in ours), [p for p in ours if p.exists()]
    assert all(p.exists() for p in users)
    assert (out / "c3" / "summary.json").read_text() == "{}"
    assert not list(tmp_path.rglob(f"*{LOCK_SUFFIX}"))


def test_build_dataset_removes_a_killed_runs_temporaries(tmp_path: Path):
    out = tmp_path / "data"
    args = ("build-dataset", *SYNTHETIC, "--cases", "2", out)
    assert run_cli(*args)[0] == 0
    before = digests(out)
    case = out / "synth-s0-00001"
    (case / "ct_xray_data.h5").unlink()  # killed while writing this case ...
    leftovers = [case / f".ct_xray_data.{RANDOM}.partial.h5", out / f".manifest.{RANDOM}.partial.csv"]
    for path in leftovers:
        path.write_bytes(b"half-written")
    code, stdout, stderr = run_cli(*args)
    assert code == 0 and "1 built, 1 skipped" in stdout, stderr
    assert not any(p.exists() for p in leftovers)
    assert digests(out) == before  # the same files, none extra, the rebuilt case byte for byte


@pytest.mark.usefixtures("resources")
def test_predict_manifest_finishes_what_a_killed_batch_left(tmp_path: Path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,pa,lateral\nc3,{PA_PNG},{LATERAL_PNG}\nc4,{PA_PNG},\n")
    out = tmp_path / "batch"
    args = ("predict", "--manifest", manifest, "-o", out, "--device", "cpu")
    assert run_cli(*args)[0] == 0
    first = digests(out / "c3")
    # c3 was being replaced (old folder moved away, new one complete but not renamed in) ...
    os.replace(out / "c3", out / f".c3.{RANDOM}.replaced")
    (out / f".c3.{RANDOM[::-1]}.partial").mkdir()
    # ... and c4 was being written for the first time, and so was the summary.
    shutil.rmtree(out / "c4")
    (out / f".c4.{RANDOM}.partial").mkdir()
    (out / f".c4.{RANDOM}.partial" / "synthetic_ct.nrrd").write_bytes(b"half")
    (out / f".batch_summary.{RANDOM}.partial.csv").write_text("case_id\n")
    code, stdout, stderr = run_cli(*args)
    assert code == 0 and "predicted 1, skipped 1" in stdout, stderr
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "c3", "c4"]
    assert digests(out / "c3") == first  # put back, so finished earlier
    assert {"synthetic_ct.nrrd", "summary.json", "report.png"} <= {p.name for p in (out / "c4").iterdir()}


@pytest.mark.usefixtures("resources")
def test_predict_removes_its_half_written_folder(tmp_path: Path):
    out = tmp_path / "pred"
    partial = tmp_path / f".pred.{RANDOM}.partial"
    partial.mkdir()
    (partial / "synthetic_ct.nrrd").write_bytes(b"half")
    code, _, stderr = run_cli(*predict_args(out))
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
    assert {"synthetic_ct.nrrd", "summary.json", "report.png"} <= {p.name for p in out.iterdir()}


def test_training_removes_a_killed_checkpoints_temporary(dataset, trained):
    leftover = trained / "checkpoints" / f".last.{RANDOM}.partial.pt"
    leftover.write_bytes(b"half a checkpoint")
    model_tmp = trained / "model" / f".model.{RANDOM}.partial.safetensors"
    model_tmp.write_bytes(b"half")
    code, _, stderr = run_cli(*train_args(dataset, trained))
    assert code == 0, stderr
    assert not leftover.exists() and not model_tmp.exists()
    assert load_checkpoint(trained / "checkpoints" / "last.pt", CHECKPOINT_FORMAT)["global_step"] == 1
    assert (trained / "model" / "model.json").is_file()


# -------------------------------------------------------------------------------------- one writer


def _hold_in_subprocess(out: Path) -> subprocess.Popen:
    """Another process holding ``out``'s lock (as a running x2ct would) until it is killed."""
    code = "import sys, time\nfrom x2ct.atomic import output_lock\nwith output_lock(sys.argv[1]):\n" \
           "    print('held', flush=True)\n    time.sleep(600)\n"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.usefixtures("resources")
def test_second_predict_into_a_held_output_is_refused_and_a_killed_holder_blocks_nothing(tmp_path: Path):
    out = tmp_path / "pred"
    assert run_cli(*predict_args(out))[0] == 0
    first = digests(out)
    holder = _hold_in_subprocess(out)
    try:
        line = one_error_line(*run_cli(*predict_args(out))[::2])
        assert line == f"x2ct: error: {out}: another x2ct run is writing this output (lock held by pid {holder.pid})"
        assert digests(out) == first
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / f".pred{LOCK_SUFFIX}").is_file()  # what the killed holder left: it locks nothing
    code, _, stderr = run_cli(*predict_args(out))
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # the lock file went with the run


@pytest.mark.usefixtures("resources")
def test_every_writing_command_refuses_a_held_output(dataset, tmp_path: Path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,pa\nc1,{PA_PNG}\n")
    out = tmp_path / "out"
    commands = [
        predict_args(out),
        ["predict", "--manifest", manifest, "-o", out, "--device", "cpu"],
        ["build-dataset", *SYNTHETIC, "--cases", "1", out],
        ["synthesize-ct", "--model", "x2ct-demo-biplanar", "--data", dataset, "-o", out, "--device", "cpu"],
        train_args(dataset, out),  # train-classifier runs through the same engine (x2ct.train.engine)
        ["evaluate-generator", "--model", "x2ct-demo-biplanar", "--data", dataset, "-o", out, "--device", "cpu"],
        ["evaluate-classifier", "--model", tmp_path / "any", "--data", dataset, "-o", out, "--device", "cpu"],
        ["demo", "-o", out, "--device", "cpu"],
        ["drr", SAMPLE_CT, "-o", out, "--size", "32"],
        ["convert-checkpoint", tmp_path / "net_G.pth", out],
    ]
    volume = tmp_path / "ct.nrrd"
    with output_lock(out), output_lock(volume):
        for command in (*commands, ["convert", SAMPLE_CT, volume]):
            held = volume if "convert" in command else out
            line = one_error_line(*run_cli(*command)[::2])
            assert line.endswith(f"{held}: another x2ct run is writing this output (lock held by pid {os.getpid()})")
    assert not out.exists() and not volume.exists() and not list(tmp_path.glob(f"*{LOCK_SUFFIX}"))


# ------------------------------------------------------------------------------------------ pickles


def test_pickled_objects_are_refused_without_torchs_advice(dataset, trained, tmp_path: Path):
    evil_run = tmp_path / "run"
    (evil_run / "checkpoints").mkdir(parents=True)
    last = evil_run / "checkpoints" / "last.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "gadget": Gadget()}, last)
    official = tmp_path / "net_G.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "gadget": Gadget()}, official)
    for args, path in [
        (train_args(dataset, evil_run), last),
        (["evaluate-generator", "--model", last, "--data", dataset, "--split", "all", "-o", tmp_path / "ev"], last),
        (["evaluate-generator", "--model", official, "--data", dataset, "--split", "all", "-o", tmp_path / "ev"],
         official),
        (["convert-checkpoint", official, tmp_path / "converted.safetensors"], official),
    ]:
        code, _, stderr = run_cli(*args)
        assert one_error_line(code, stderr) == f"x2ct: error: {path}: {UNSAFE_PICKLE}"
        assert "weights_only" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_G.pth", "run"]


def test_unreadable_pickles_name_no_unsafe_way_out(tmp_path: Path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02" + b"not a pickle" * 8)
    with pytest.raises(Exception) as err:
        load_weights_only(garbage, what="training checkpoint")
    assert str(err.value) == f"{garbage}: not a loadable training checkpoint (damaged, or another kind of file)"
