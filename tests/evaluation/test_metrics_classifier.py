"""The committed classifiers: checksum, recorded test accuracy on the real test split, tamper detection."""

import hashlib
import json
import shutil

import pytest
import torch

from diffusion_objectives import data
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation.metrics import classifier
from diffusion_objectives.evaluation.metrics.classifier import ASSETS, SmallCNN, load_classifier, registry_entry

DATASETS = ["digits", "fashion-mnist"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_weights_match_their_checksum_and_size(dataset):
    entry = registry_entry(dataset)
    raw = (ASSETS / entry["file"]).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
    assert len(raw) == entry["bytes"] < 400_000  # "a few hundred kB at most"
    assert entry["training"]["augmentation"] == "none"


@pytest.mark.parametrize("dataset", DATASETS)
def test_recorded_test_accuracy_is_reproduced(dataset):
    model, entry = load_classifier(dataset)
    test = data.get(dataset, split="test")
    assert len(test) == entry["n_test"]
    with torch.inference_mode():
        predicted = torch.cat([model(test.data[i:i + 2000]).argmax(1) for i in range(0, len(test), 2000)])
    accuracy = (predicted == test.labels).double().mean().item()
    assert accuracy == pytest.approx(entry["test_accuracy"], abs=1e-3)
    assert accuracy > {"digits": 0.97, "fashion-mnist": 0.90}[dataset]


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    for f in ("classifiers.json", registry_entry("digits")["file"]):
        shutil.copy(ASSETS / f, tmp_path / f)
    table = json.loads((tmp_path / "classifiers.json").read_text())
    table["digits"]["sha256"] = "0" * 64
    (tmp_path / "classifiers.json").write_text(json.dumps(table))
    monkeypatch.setattr(classifier, "ASSETS", tmp_path)
    with pytest.raises(OptionError, match="sha256"):
        load_classifier("digits")
    with pytest.raises(OptionError, match="available: digits, fashion-mnist"):
        load_classifier("cifar10")


@pytest.mark.parametrize("hw", [8, 28])
def test_architecture_shapes(hw):
    model = SmallCNN(channels=(4, 8, 16), features=32).eval()
    x = torch.zeros(3, 1, hw, hw)
    assert model.features(x).shape == (3, 32) and model(x).shape == (3, 10)
