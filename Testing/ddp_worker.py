"""A training run on the real engine for the distributed tests, started by ``torchrun`` (or plainly for one process).

    python -m torch.distributed.run --nproc_per_node 2 Testing/ddp_worker.py KIND DATA OUT [options] [KEY=VALUE ...]

KIND is ``generator`` or ``classifier``; KEY=VALUE are the trainer's settings (``--set`` of the CLI).
After training every rank writes the state of its networks (parameters and buffers) to
``OUT/replica_<rank>.safetensors``, so a test can compare the replicas with each other and with a
one-process run.

``--float64`` builds the networks and feeds the data in double precision: single-precision sums over
many voxels depend on how a batch is split (their rounding differs by up to about 1e-3 of the
largest gradient for these tiny networks), and double precision shrinks that to about 1e-14, so the
equality of N ranks with batch b and one process with batch N·b can be checked tightly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List

import torch
from safetensors.torch import save_file

from x2ct.data.loader import CaseItem


class DefaultDtype:
    """A data set whose images come in torch's default dtype (float64 under ``--float64``)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> CaseItem:
        item = self.dataset[index]
        dtype = torch.get_default_dtype()
        images = {key: image.to(dtype) for key, image in item.images.items()}
        target = None if item.target is None else item.target.to(dtype)
        return CaseItem(item.case_id, images, target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("generator", "classifier"))
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("settings", nargs="*")
    args = parser.parse_intermixed_args(argv)
    if args.float64:
        torch.set_default_dtype(torch.float64)
    overrides = [f"data={args.data}", f"out={args.out}", *args.settings]
    if args.kind == "generator":
        from x2ct.train.config import load_config
        from x2ct.train.generator import GeneratorTrainer

        trainer = GeneratorTrainer(load_config(None, overrides))
    else:
        from x2ct.classify.config import load_config as load_classifier_config
        from x2ct.classify.train import ClassifierTrainer

        trainer = ClassifierTrainer(load_classifier_config(None, overrides), log=lambda line: None)
    trainer.train_set = DefaultDtype(trainer.train_set)
    if getattr(trainer, "val_set", None) is not None:
        trainer.val_set = DefaultDtype(trainer.val_set)
    from x2ct.train.engine import run_training

    result = run_training(trainer, log=lambda line: None)
    state = {f"{name}.{key}": value.detach().cpu().contiguous()
             for name, net in trainer.networks().items() for key, value in net.state_dict().items()}  # fmt: skip
    save_file(state, str(Path(args.out) / f"replica_{result.rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
