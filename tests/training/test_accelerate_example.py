"""examples/accelerate_train.py under ``accelerate launch`` with 2 CPU processes: a diffusers UNet2DModel trained
with WeightedLoss(sigmoid) and AdaptiveSchedule in a user's own loop ends with the same parameters and the same
adaptive-schedule state in both processes (the per-bin statistics are all-reduced, as ``diffobj train`` does)."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "accelerate_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_end_identical(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(EXAMPLE), "--steps", "6", "--batch-size", "16", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(tmp_path / f"state-rank{r}.pt") for r in (0, 1)]
    assert [s["world"] for s in states] == [2, 2]
    assert torch.equal(states[0]["params"], states[1]["params"])
    for key in ("ema", "ema_weight"):
        assert torch.equal(states[0]["adaptive"][key], states[1]["adaptive"][key])
    # it trained: the parameters left their initial values, and the schedule saw λ in several bins
    spec = importlib.util.spec_from_file_location("accelerate_train", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    initial = torch.cat([p.detach().reshape(-1) for p in example.build_model(0).parameters()])
    assert not torch.equal(initial, states[0]["params"])
    assert int((states[0]["adaptive"]["ema_weight"] > 0).sum()) > 10
