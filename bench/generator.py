"""CPU inference benchmark of the X2CT-GAN generators: ours vs a straightforward eager implementation, in one run.

Usage (from the repository root)::

    python bench/generator.py                 # official-size +B and +S, plus any Resources/Models/* model
    python bench/generator.py --repeats 3 --runs 3

What is compared, on the *same* weights and inputs:

* ``straightforward``: what the official code does at test time. The same modules run eagerly
  under ``torch.no_grad()`` with every inference optimisation off (``fast_inference = False``) and,
  for +B, all three heads computed (``forward_with_view_heads``; the fused output is used).
* ``ours``: ``model(pa, lateral)`` in eval mode under ``torch.inference_mode()``: the per-view
  heads skipped (+B), skip links in depth-plane form, transposed convolutions as sub-pixel
  convolutions, the 7³ head by FFT (see ``x2ct/models/fast_ops.py``).

Models: official-size +B (61,740,467 parameters) and +S (29,384,481) at 128³ with random weights
drawn as the official ``init_net`` does (N(0, 0.02), biases 0, seed 0), batch 1, random inputs in
[0,1]; and every bundled model found under ``Resources/Models/<name>/`` (its own weights).

Method: each (model, method) measurement is a fresh child process (honest peak memory) with
``torch.set_num_threads(2)``: build, reset the kernel's peak-RSS counter (``/proc/self/clear_refs``),
one warm-up forward (peak RSS read after it), then ``--runs`` timed forwards (median). Child
processes alternate between the methods ``--repeats`` times, so load drifts hit both alike; the
reported time is the median over repeats. Max |Δ| compares the two methods' final outputs
(clamped to [0,1]). Reported: ratio ours / straightforward (the target is <= 0.5 for +B with
max |Δ| <= 1e-4), peak RSS, and the machine's load average (the machine may be shared).

Outputs: ``bench/results/generator.json`` and the table between the markers in
``docs/generator_benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "generator.json"
DOC = REPO / "docs" / "generator_benchmark.md"
BEGIN, END = "<!-- BEGIN RESULTS -->", "<!-- END RESULTS -->"
METHODS = ("straightforward", "ours")
OFFICIAL_SECONDS = {"biplanar": 5.22, "single": 1.84}
"""Seconds per forward of the official kylekma/X2CT networks, measured once on this machine type with 2 threads
(the official code is not vendored here, so no command in this repository reruns it)."""


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _build(model_name: str):
    from x2ct.models import X2CTBiplanar, X2CTSingleView, load_generator

    if model_name in ("biplanar", "single"):
        model = X2CTBiplanar() if model_name == "biplanar" else X2CTSingleView()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if name.endswith("weight") else torch.zeros_like(p))
        return model.eval()
    return load_generator(REPO / "Resources" / "Models" / model_name)


def child(model_name: str, method: str, runs: int, out: Path) -> Dict[str, Any]:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(2)
    model = _build(model_name)
    size = model.config.grid_size
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 1, size, size, generator=gen) for _ in model.views]
    if method == "ours":
        model.fast_inference = True

        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return model(*inputs)

    else:
        model.fast_inference = False
        all_heads = len(model.views) == 2

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return model.forward_with_view_heads(*inputs)[0] if all_heads else model(*inputs)

    rss_before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    output = forward()
    first = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    times: List[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    np.save(out, output.numpy())
    return {
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "seconds_first_call": first,
        "peak_rss_mb": peak / 1024.0,
        "forward_peak_increase_mb": (peak - rss_before) / 1024.0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "grid_size": size,
        "views": list(model.views),
    }


def run_child(model_name: str, method: str, runs: int, out: Path) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", model_name, method, str(out), "--runs", str(runs)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bundled_models() -> List[str]:
    root = REPO / "Resources" / "Models"
    return sorted(p.name for p in root.iterdir() if (p / "model.json").is_file()) if root.is_dir() else []


def benchmark(model_name: str, repeats: int, runs: int, tmp: Path) -> Dict[str, Any]:
    records: Dict[str, List[Dict[str, Any]]] = {m: [] for m in METHODS}
    for repeat in range(repeats):
        order = METHODS if repeat % 2 == 0 else METHODS[::-1]
        for method in order:
            records[method].append(run_child(model_name, method, runs, tmp / f"{model_name}_{method}.npy"))
            print(f"{model_name} {method} repeat {repeat}: {records[method][-1]['seconds_median']:.2f} s", flush=True)
    outputs = {m: np.load(tmp / f"{model_name}_{m}.npy") for m in METHODS}
    summary: Dict[str, Any] = {"model": model_name, "parameters": records["ours"][0]["parameters"]}
    for method in METHODS:
        summary[method] = {
            "seconds": statistics.median(r["seconds_median"] for r in records[method]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records[method]),
            "forward_peak_increase_mb": max(r["forward_peak_increase_mb"] for r in records[method]),
            "runs": records[method],
        }
    summary["time_ratio"] = summary["ours"]["seconds"] / summary["straightforward"]["seconds"]
    summary["memory_ratio"] = summary["ours"]["peak_rss_mb"] / summary["straightforward"]["peak_rss_mb"]
    summary["max_abs_diff"] = float(np.abs(outputs["ours"] - outputs["straightforward"]).max())
    if model_name in OFFICIAL_SECONDS:
        summary["official_code_seconds_reference"] = OFFICIAL_SECONDS[model_name]
    return summary


def table(results: List[Dict[str, Any]]) -> str:
    rows = [
        "| Model | Params | Straightforward: time (ratio to official 5.22/1.84 s) | Ours: time ratio | "
        "Peak RSS straightforward → ours | Max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        official = r.get("official_code_seconds_reference")
        vs_official = f"{r['straightforward']['seconds'] / official:.2f}× official" if official else "–"
        rows.append(
            f"| {r['model']} | {r['parameters']:,} | {r['straightforward']['seconds']:.2f} s ({vs_official}) "
            f"| **{r['time_ratio']:.2f}×** ({r['ours']['seconds']:.2f} s) "
            f"| {r['straightforward']['peak_rss_mb']:,.0f} MB → {r['ours']['peak_rss_mb']:,.0f} MB "
            f"| {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "METHOD", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=2, help="timed forwards per child after one warm-up (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="child processes per method and model (default 2)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.runs, Path(args.child[2]))))
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = [benchmark(m, args.repeats, args.runs, Path(tmp)) for m in ("biplanar", "single", *bundled_models())]
    report = {
        "command": f"python bench/generator.py --repeats {args.repeats} --runs {args.runs}",
        "threads": 2,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    block = (
        f"{BEGIN}\nCommand: `{report['command']}` — torch {report['torch']}, 2 threads, load average "
        f"{load_before[0]:.1f} before / {report['load_average_after'][0]:.1f} after.\n\n{table(results)}\n{END}"
    )
    DOC.write_text(head + block + rest.split(END, 1)[1])
    print(table(results))


if __name__ == "__main__":
    main()
