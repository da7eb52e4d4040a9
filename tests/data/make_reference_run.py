"""Writes reference_run.json: what a seeded short run on the bundled sample produces, bit for bit.

tests/test_reference_run.py reruns the same runs and compares. Regenerate only when a change is
meant to alter training (say so in the commit); a refactor of the trainer must leave it as is.

    python tests/data/make_reference_run.py
"""

import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

from effv2_lib.train import TrainConfig, train

TIMING_KEYS = ("images_per_s", "epoch_time", "wall_time", "compile_time")
OUT = Path(__file__).with_name("reference_run.json")


def reference_config(loader: str) -> TrainConfig:
    """cifar-tiny, the cifar10 preset in smoke size (4 epochs, 4 stages, 10 images per class), with EMA
    and the BatchNorm re-estimation forced on, so that every part of the loop leaves a trace."""
    return TrainConfig(model="cifar-tiny", smoke=True, sample=True, device="cpu", loader=loader, seed=0,
                       ema=True, bn_reestimate=True, num_workers=0)


def fingerprint(loader: str) -> dict:
    result = train(reference_config(loader), progress=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    history = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in result.history]
    bn = result.summary["bn_reestimation"]
    return {"history": history, "final_test_acc": result.summary["final_test_acc"],
            "test_acc_before_bn": bn["test_acc_before"], "weights_sha256": digest.hexdigest()}


def platform_key() -> dict:
    """What decides the floating-point kernels: torch release, CPU architecture and the vector
    instructions ATen dispatches to, and the number of threads (reductions split by thread)."""
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def main() -> None:
    runs = {loader: fingerprint(loader) for loader in ("device", "cpu")}
    record = {**platform_key(), "python": sys.version.split()[0], "runs": runs}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
