"""Train the small CNN classifiers whose penultimate features give the fast FD of docs/metrics.md.

    python scripts/train_classifiers.py                 # both, written to src/diffusion_objectives/assets
    python scripts/train_classifiers.py --dataset digits --out /tmp/check

Deterministic on the CPU: explicit torch.Generators (initialisation and shuffling), deterministic
algorithms, a fixed thread count, no augmentation (no horizontal flips: a flipped digit or shoe is out of
distribution). The weights go to ``classifier-<dataset>.safetensors`` and ``classifiers.json`` records the
file's sha256, the test accuracy, the architecture and this training configuration. Rerunning with the
same torch version and thread count reproduces the file bit for bit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusion_objectives import data
from diffusion_objectives.evaluation.metrics.classifier import ASSETS, SmallCNN, init_parameters
from diffusion_objectives.evaluation.metrics.reference import sha256_file

# Presets: one per dataset. Units in the names: epochs over the train split, examples per batch.
ARCHITECTURE = dict(in_channels=1, channels=[24, 48, 96], features=128, num_classes=10)
PRESETS = {
    "digits": dict(architecture=ARCHITECTURE, epochs=60, batch_size=64, lr=3e-3, weight_decay=1e-4),
    "fashion-mnist": dict(architecture=ARCHITECTURE, epochs=10, batch_size=128, lr=3e-3, weight_decay=1e-4),
}


@torch.inference_mode()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose arg-max logit equals ``labels``."""
    model.eval()
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, images.shape[0], batch_size))
    return correct / images.shape[0]


def train(dataset: str, seed: int, out: Path, threads: int) -> dict:
    preset = PRESETS[dataset]
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    train_set, test_set = data.get(dataset, split="train"), data.get(dataset, split="test")
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(**preset["architecture"])
    init_parameters(model, generator)
    opt = torch.optim.AdamW(model.parameters(), lr=preset["lr"], weight_decay=preset["weight_decay"])
    steps_per_epoch = -(-len(train_set) // preset["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=preset["lr"],
                                                total_steps=preset["epochs"] * steps_per_epoch)
    start = time.time()
    for epoch in range(preset["epochs"]):
        model.train()
        perm = torch.randperm(len(train_set), generator=generator)
        for i in range(0, len(train_set), preset["batch_size"]):
            idx = perm[i:i + preset["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(train_set.data[idx]), train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % max(1, preset["epochs"] // 10) == 0:
            print(f"{dataset}: epoch {epoch + 1}/{preset['epochs']} loss {loss.item():.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    model.eval()
    test_acc = accuracy(model, test_set.data, test_set.labels)
    file = out / f"classifier-{dataset}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file,
              # one metadata key: safetensors writes several in a random order, which would change the sha256
              metadata={"config": json.dumps({"dataset": dataset, **preset["architecture"]}, sort_keys=True)})
    entry = {
        "file": file.name,
        "sha256": sha256_file(file),
        "bytes": file.stat().st_size,
        "test_accuracy": test_acc,
        "n_test": len(test_set),
        "train_accuracy": accuracy(model, train_set.data, train_set.labels),
        "input_shape": list(train_set.shape),
        "architecture": preset["architecture"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            "command": f"python scripts/train_classifiers.py --dataset {dataset} --seed {seed} --threads {threads}",
            "seed": seed, "threads": threads, "epochs": preset["epochs"], "batch_size": preset["batch_size"],
            "optimizer": "AdamW + one-cycle LR", "lr": preset["lr"], "weight_decay": preset["weight_decay"],
            "augmentation": "none", "data": f"diffusion_objectives.data.get({dataset!r}, split='train')",
            "torch": torch.__version__, "seconds": round(time.time() - start, 1),
            "date": datetime.date.today().isoformat(),
        },
    }
    print(f"{dataset}: test accuracy {test_acc:.4f}, {entry['bytes']} bytes, sha256 {entry['sha256']}")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (part of what makes it reproducible)")
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder for the weights and classifiers.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table_file = args.out / "classifiers.json"
    table = json.loads(table_file.read_text()) if table_file.is_file() else {}
    for dataset in PRESETS if args.dataset == "all" else [args.dataset]:
        table[dataset] = train(dataset, args.seed, args.out, args.threads)
        table_file.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
