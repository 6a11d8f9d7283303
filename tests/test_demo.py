"""`tltorch-ext demo`: a small end-to-end run, the --data formats and bad input."""
import json

import numpy as np
import pytest
import torch

from tltorch_ext import cli, demo

FAST = ["--steps", "40", "--epochs", "3", "--seeds", "0", "--quiet"]


def _run(tmp_path, *extra, out="out"):
    argv = ["demo", "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), *FAST, *extra]
    return cli.main(argv), tmp_path / out


def _results(out):
    meta = json.loads((out / "results.json").read_text())
    return meta, {r["method"]: r for r in meta["results"]}


def test_digits_smoke_run_writes_table_json_csv_png_and_caches_the_source_model(tmp_path, capsys):
    status, out = _run(tmp_path, "--methods", "finetune", "l2sp")
    assert status == 0
    table = capsys.readouterr().out
    assert "target acc" in table and "\nfinetune " in table and "\nl2sp " in table

    meta, results = _results(out)
    assert set(results) == {"finetune", "l2sp"}
    assert meta["chance_accuracy"] == pytest.approx(0.2)  # digits 5-9
    for result in results.values():
        assert 0.0 <= result["accuracy_mean"] <= 1.0 and result["ms_per_step"] > 0
        assert [run["seed"] for run in result["runs"]] == [0]
    assert results["finetune"]["accuracy_mean"] > 0.5  # well above chance after pre-training on 0-4
    assert results["finetune"]["overhead_ms_per_step"] == 0.0
    assert results["l2sp"]["overhead_ms_per_step"] == pytest.approx(
        results["l2sp"]["ms_per_step"] - results["finetune"]["ms_per_step"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("method,accuracy_mean") and [r.split(",")[0] for r in rows[1:]] == ["finetune", "l2sp"]

    cached = list((tmp_path / "cache").glob("source-*.pt"))
    assert len(cached) == 1
    # Second run: the cached source model and the same seed give the same accuracy.
    status, again = _run(tmp_path, "--methods", "finetune", out="again")
    assert status == 0 and list((tmp_path / "cache").glob("source-*.pt")) == cached
    assert _results(again)[1]["finetune"]["accuracy_mean"] == results["finetune"]["accuracy_mean"]


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
    assert data.x.shape == (48, 1, 8, 8) and data.x.dtype == torch.float32
    assert data.class_names == ["a", "b", "c", "d"]
    assert data.source_classes == [0, 1] and data.target_classes == [2, 3]
    target_x, target_y = data.task(data.target_classes)
    assert len(target_x) == 24 and sorted(set(target_y.tolist())) == [0, 1]
    assert torch.allclose(data.x.mean(), torch.tensor(0.0), atol=1e-5)  # standardized

    rgb = demo.load_data(_synthetic_npz(tmp_path / "rgb.npz", channels=3))
    assert rgb.x.shape == (48, 3, 8, 8)


def test_npz_data_end_to_end(tmp_path):
    path = _synthetic_npz(tmp_path / "toy.npz")
    status, out = _run(tmp_path, "--data", str(path), "--shots", "3", "--methods", "finetune", "scratch")
    assert status == 0
    meta, results = _results(out)
    assert meta["chance_accuracy"] == 0.5 and meta["data"].startswith("toy.npz")
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
    assert data.x.shape == (6, 1, 12, 12)
    assert data.class_names == ["cat", "dog", "eel"]
    assert data.source_classes == [0] and data.target_classes == [1, 2]  # ⌊3/2⌋ source classes


def test_few_shot_split_takes_shots_per_class_and_tests_on_the_rest():
    y = torch.tensor([0] * 5 + [1] * 7)
    train, test = demo.few_shot_split(y, shots=2, seed=3)
    assert torch.bincount(y[train]).tolist() == [2, 2] and torch.bincount(y[test]).tolist() == [3, 5]
    assert sorted(torch.cat([train, test]).tolist()) == list(range(12))
    assert torch.equal(train, demo.few_shot_split(y, shots=2, seed=3)[0])
    with pytest.raises(demo.DemoError, match="has 5 samples; --shots 5 needs at least 6"):
        demo.few_shot_split(y, shots=5, seed=0)


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
    status, _ = _run(tmp_path, "--data", str(_synthetic_npz(tmp_path / "toy.npz")), "--shots", "12")
    assert status == 2 and "needs at least 13" in capsys.readouterr().err
