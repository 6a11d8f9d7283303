"""`tltorch-ext demo`: a small end-to-end run, the --data formats and bad input."""
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tltorch_ext import cli, demo

FAST = ["--steps", "20", "--epochs", "2", "--seeds", "0", "--workers", "1", "--quiet"]


def _run(tmp_path, *extra, out="out"):
    argv = ["demo", "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), *FAST, *extra]
    return cli.main(argv), tmp_path / out


def _results(out):
    meta = json.loads((out / "results.json").read_text())
    return meta, {r["method"]: r for r in meta["results"]}


def test_digits_learning_curve_writes_table_json_csv_png_and_caches_the_source_model(tmp_path,
                                                                                  capsys):
    methods = ["finetune", "l2sp", "dann", "self_ensemble", "mcc", "scratch"]
    status, out = _run(tmp_path, "--shots", "3", "1", "--methods", *methods)
    assert status == 0
    table = capsys.readouterr().out
    assert "1-shot acc %" in table and "3-shot acc %" in table
    assert all(f"\n{m} " in table for m in methods)

    meta = json.loads((out / "results.json").read_text())
    assert meta["shots"] == [1, 3] and meta["chance_accuracy"] == pytest.approx(0.1)
    assert 0.0 <= meta["source_as_is_test_accuracy"] <= 1.0
    assert meta["source_train_accuracy"] > 0.5  # measured on the images as pre-training saw them
    results = {(r["method"], r["shots"]): r for r in meta["results"]}
    assert set(results) == {(m, n) for m in methods for n in (1, 3)}
    for (method, shots), result in results.items():
        assert 0.0 <= result["accuracy_mean"] <= 1.0 and result["ms_per_step"] > 0
        assert [run["seed"] for run in result["runs"]] == [0]
        assert result["overhead_ms_per_step"] == pytest.approx(
            result["ms_per_step"] - results["finetune", shots]["ms_per_step"])
    assert results["finetune", 3]["accuracy_mean"] > 0.2  # above chance after pre-training
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r.split(",") for r in (out / "results.csv").read_text().splitlines()]
    assert rows[0][:3] == ["method", "shots", "accuracy_mean"] and len(rows) == 1 + 2 * len(methods)

    cached = list((tmp_path / "cache").glob("source-*.pt"))
    assert len(cached) == 1
    # Second run: the cached source model and the same seed give the same accuracy.
    status, again = _run(tmp_path, "--shots", "1", "--methods", "finetune", out="again")
    assert status == 0 and list((tmp_path / "cache").glob("source-*.pt")) == cached
    again = json.loads((again / "results.json").read_text())["results"][0]
    assert again["accuracy_mean"] == results["finetune", 1]["accuracy_mean"]


def test_worker_processes_give_the_serial_runs_results(tmp_path):
    """Each run seeds its own random numbers: two worker processes give every run's accuracies
    exactly, whatever order the runs finish in."""
    options = ["--shots", "1", "--seeds", "0", "1", "--steps", "6", "--methods", "finetune",
               "stochnorm", "mcc", "scratch"]
    status, serial = _run(tmp_path, *options, out="serial")
    assert status == 0
    status, parallel = _run(tmp_path, *options, "--workers", "2", out="parallel")
    assert status == 0
    serial, parallel = (json.loads((out / "results.json").read_text())
                        for out in (serial, parallel))
    assert (serial["workers"], parallel["workers"]) == (1, 2)

    def accuracies(meta):
        return {(r["method"], r["shots"], run["seed"]): (run["val_accuracy"], run["test_accuracy"])
                for r in meta["results"] for run in r["runs"]}

    assert len(accuracies(serial)) == 4 * 2
    assert accuracies(parallel) == accuracies(serial)
    assert len(set(accuracies(serial).values())) > 4  # the runs differ: not one constant


def test_digits_task_is_deterministic_and_keeps_target_images_out_of_the_source():
    data, same, other = demo.digits_task(0), demo.digits_task(0), demo.digits_task(1)
    assert torch.equal(data.target_x, same.target_x) and torch.equal(data.source_x, same.source_x)
    assert not torch.equal(data.target_x, other.target_x)  # the noise follows the seed
    assert torch.equal(data.source_x, other.source_x) and torch.equal(data.target_y, other.target_y)
    assert len(data.source_y) + len(data.target_y) == 1797 and data.shared_classes
    assert data.source_x.shape[1:] == data.target_x.shape[1:] == (1, 16, 16)
    assert torch.bincount(data.source_y).min() > 70 and torch.bincount(data.target_y).min() > 70
    # Source and target split the digits: the target is the other half, inverted, plus noise.
    noise = 0.3 * torch.randn(data.target_x.shape, generator=torch.Generator().manual_seed(0))
    clean_target = 1 - (data.target_x * 0.35 + 0.25) + noise
    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    digits = torch.nn.functional.interpolate(digits, size=16, mode="bilinear", align_corners=False)
    projection = torch.randn(256, dtype=torch.float64)

    def fingerprints(images):
        return torch.sort(images.flatten(1).double() @ projection).values

    assert torch.allclose(fingerprints(torch.cat([data.source_x, clean_target])),
                          fingerprints(digits), atol=1e-4)

    generator = torch.Generator().manual_seed(5)
    augmented = demo.augment(data.source_x[:64], generator)
    again = demo.augment(data.source_x[:64], torch.Generator().manual_seed(5))
    assert torch.equal(augmented, again) and not torch.equal(augmented, data.source_x[:64])
    assert augmented.min() >= 0 and augmented.max() <= 1 + 1e-6


def test_target_split_keeps_one_test_set_and_draws_shots_from_the_rest():
    y = torch.tensor([0] * 10 + [1] * 15)
    one, three = demo.target_split(y, shots=1, seed=0), demo.target_split(y, shots=3, seed=7)
    assert torch.equal(one["test"], three["test"])  # the same test set for every seed and shots
    assert torch.bincount(y[one["test"]]).tolist() == [4, 6]
    assert torch.bincount(y[three["train"]]).tolist() == [3, 3]
    parts = torch.cat([three["train"], three["val"], three["test"]])
    assert sorted(parts.tolist()) == list(range(25))
    assert sorted(three["unlabelled"].tolist()) == sorted(
        torch.cat([three["train"], three["val"]]).tolist())
    assert not torch.equal(demo.target_split(y, 3, 0)["train"], three["train"])
    assert torch.equal(demo.target_split(y, 3, 7)["train"], three["train"])
    with pytest.raises(demo.DemoError, match="has 10 samples; --shots 6 needs at least 7 beside"):
        demo.target_split(y, shots=6, seed=0)


def _synthetic_npz(path, channels=None, per_class=12):
    """Four classes, each a bright 4x4 quadrant of an 8x8 image plus noise; labels are strings."""
    generator = np.random.default_rng(0)
    images, labels = [], []
    for label, (row, col) in zip(["a", "b", "c", "d"], [(0, 0), (0, 4), (4, 0), (4, 4)]):
        for _ in range(per_class):
            image = generator.normal(0.0, 0.3, (8, 8))
            image[row:row + 4, col:col + 4] += 3.0
            images.append(image if channels is None else np.repeat(image[None], channels, 0))
            labels.append(label)
    np.savez(path, x=np.stack(images).astype(np.float32), y=np.array(labels))
    return path


def test_npz_data_first_half_of_sorted_classes_is_the_source(tmp_path):
    data = demo.load_data(_synthetic_npz(tmp_path / "toy.npz"))
    assert data.source_x.shape == (24, 1, 8, 8) and data.source_x.dtype == torch.float32
    assert data.source_names == ["a", "b"] and data.target_names == ["c", "d"]
    assert not data.shared_classes and not data.augment_source
    assert sorted(set(data.target_y.tolist())) == [0, 1] and len(data.target_x) == 24
    everything = torch.cat([data.source_x, data.target_x])
    assert torch.allclose(everything.mean(), torch.tensor(0.0), atol=1e-5)  # standardized

    rgb = demo.load_data(_synthetic_npz(tmp_path / "rgb.npz", channels=3))
    assert rgb.source_x.shape == (24, 3, 8, 8)


def test_npz_data_end_to_end(tmp_path):
    path = _synthetic_npz(tmp_path / "toy.npz")
    status, out = _run(tmp_path, "--data", str(path), "--shots", "3", "--methods", "finetune",
                       "self_ensemble", "scratch")
    assert status == 0
    meta, results = _results(out)
    assert meta["chance_accuracy"] == 0.5 and meta["data"].startswith("toy.npz")
    assert meta["source_as_is_test_accuracy"] is None  # other classes: no source model as is
    assert all(0.0 <= r["accuracy_mean"] <= 1.0 for r in results.values())
    assert results["finetune"]["accuracy_mean"] > 0.75  # the quadrants are easy to tell apart


def test_image_folder_data_is_resized_to_grayscale_squares(tmp_path):
    from PIL import Image

    for name, size in [("cat", (20, 12)), ("dog", (9, 30)), ("eel", (16, 16))]:
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", size, (40 * i, 100, 200)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "eel" / "notes.txt").write_text("not an image")
    data = demo.load_data(tmp_path, image_size=12)
    assert data.source_x.shape == (2, 1, 12, 12) and data.target_x.shape == (4, 1, 12, 12)
    assert data.source_names == ["cat"] and data.target_names == ["dog", "eel"]  # ⌊3/2⌋ source


def test_bad_data_paths_give_clear_errors(tmp_path, capsys):
    missing = tmp_path / "nowhere.npz"
    status, _ = _run(tmp_path, "--data", str(missing))
    assert status == 2
    assert "does not exist" in capsys.readouterr().err

    with pytest.raises(ValueError, match="lacks the arrays \\['y'\\]"):
        np.savez(tmp_path / "no_y.npz", x=np.zeros((4, 8, 8)))
        demo.load_data(tmp_path / "no_y.npz")
    with pytest.raises(ValueError, match=r"x must be \(N, H, W\) or \(N, C, H, W\)"):
        np.savez(tmp_path / "flat.npz", x=np.zeros((4, 64)), y=np.arange(4))
        demo.load_data(tmp_path / "flat.npz")
    with pytest.raises(ValueError, match="at least 2 classes"):
        np.savez(tmp_path / "one.npz", x=np.zeros((4, 8, 8)), y=np.zeros(4))
        demo.load_data(tmp_path / "one.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither an .npz file nor a folder"):
        demo.load_data(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no class sub-folder with images"):
        demo.load_data(tmp_path / "empty")
    # Too few target samples for --shots: reported before any training.
    toy = str(_synthetic_npz(tmp_path / "toy.npz"))
    status, _ = _run(tmp_path, "--data", toy, "--shots", "8")
    assert status == 2 and "needs at least 9 beside the 5 it keeps to test" in capsys.readouterr().err
    status, _ = _run(tmp_path, "--data", toy, "--shots", "1", "--methods", "dann")
    assert status == 2 and "dann needs the source's classes" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--shots", "0"], "expected a positive integer, got 0"),
    (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    (["--methods", "mixup"], "invalid choice: 'mixup'"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, *options)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_weights_that_do_not_fit_exit_2(tmp_path, capsys):
    status, _ = _run(tmp_path, "--weights", str(tmp_path / "none.pt"))
    assert status == 2 and "is not a readable torch checkpoint" in capsys.readouterr().err
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "other.pt")
    status, _ = _run(tmp_path, "--weights", str(tmp_path / "other.pt"))
    assert status == 2 and "does not fit --model" in capsys.readouterr().err


@pytest.mark.parametrize("name, parameters", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnets_have_torchvision_sizes_and_names(name, parameters):
    model = demo.ResNet(name, 3, 1000)
    assert sum(p.numel() for p in model.parameters()) == parameters  # torchvision's counts
    keys = set(model.state_dict())
    assert {"backbone.conv1.weight", "backbone.bn1.running_var", "backbone.layer2.0.downsample.0.weight",
            "backbone.layer4.1.bn2.weight", "head.weight"} <= keys
    assert ("backbone.layer1.0.conv3.weight" in keys) == (name == "resnet50")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 1000)


def test_resnet_matches_torchvision_when_installed():
    torchvision = pytest.importorskip("torchvision")
    ours = demo.ResNet("resnet18", 3, 1000).state_dict()
    theirs = {f"backbone.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    theirs = {("head." + k[len("backbone.fc."):] if k.startswith("backbone.fc.") else k): v
              for k, v in theirs.items()}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_resnet18_from_a_torchvision_style_checkpoint_end_to_end(tmp_path):
    """--model resnet18 --weights: an RGB torchvision-layout checkpoint on gray digits (its first
    conv summed over colours), DELTA on layer2-4, StochNorm through convert_model."""
    checkpoint = {k.removeprefix("backbone."): v for k, v in
                  demo.ResNet("resnet18", 3, 1000).state_dict().items() if k.startswith("backbone.")}
    checkpoint["fc.weight"], checkpoint["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(checkpoint, tmp_path / "resnet18.pth")
    gray = demo.ResNet("resnet18", 1, 10)
    demo.model.load_weights(gray, tmp_path / "resnet18.pth")
    assert torch.allclose(gray.backbone.conv1.weight, checkpoint["conv1.weight"].sum(1, keepdim=True))

    status, out = _run(tmp_path, "--model", "resnet18", "--weights", str(tmp_path / "resnet18.pth"),
                       "--epochs", "1", "--steps", "3", "--shots", "1", "--methods", "finetune",
                       "delta", "stochnorm")
    assert status == 0
    meta, results = _results(out)
    assert meta["model"] == "resnet18" and set(results) == {"finetune", "delta", "stochnorm"}
