"""`tltorch-ext rank`: Kendall's τ-b against scipy, a small end-to-end ranking, bad options."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tltorch_ext import cli, ranking
from tltorch_ext.demo import digits_task, rank, target_split

FAST = ["--epochs", "1", "--steps", "4", "--seeds", "0", "--shots", "2", "--workers", "1",
        "--quiet"]


def _rank(tmp_path, *extra):
    argv = ["rank", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *FAST,
            *extra]
    return cli.main(argv), tmp_path / "out"


@pytest.mark.parametrize("n, levels", [(2, 100), (6, 100), (7, 3), (12, 4), (40, 6)])
def test_kendall_tau_b_matches_scipy_with_and_without_ties(n, levels):
    generator = np.random.default_rng(n + levels)
    for _ in range(20):
        x, y = generator.integers(0, levels, n), generator.integers(0, levels, n)
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        expected = stats.kendalltau(x, y, variant="b").statistic
        assert rank.kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_b_known_cases_and_bad_input():
    assert rank.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert rank.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # One discordant pair of six: (5 - 1) / 6.
    assert rank.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Ties: pairs (concordant - discordant) = 2, untied 3 in x and 2 in y: 2 / sqrt(6).
    assert rank.kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(rank.kendall_tau([1, 1, 1], [1, 2, 3]))  # as scipy: undefined
    with pytest.raises(ValueError, match="two 1-D sequences of one length"):
        rank.kendall_tau([1, 2, 3], [1, 2])


def test_ranks_give_one_to_the_largest_and_share_ties():
    assert rank.ranks([0.2, 0.9, 0.5]) == [3, 1, 2]
    assert rank.ranks([1.0, 3.0, 3.0, 2.0]) == [4, 1, 1, 3]


def test_rank_command_scores_finetunes_and_correlates(tmp_path, capsys):
    names = ["augmented", "digits0-4", "random"]
    status, out = _rank(tmp_path, "--candidates", *names)
    assert status == 0
    table = capsys.readouterr().out
    assert "Kendall τ-b" in table and all(f"\n{name} " in table for name in names)
    meta = json.loads((out / "results.json").read_text())
    rows = {row["candidate"]: row for row in meta["candidates"]}
    assert list(rows) == names and meta["shots"] == 2 and meta["seeds"] == [0]
    # LEEP and NCE see each candidate's own source head: 5 classes for the digits 0-4.
    assert {n: rows[n]["source_classes"] for n in names} == {
        "augmented": 10, "digits0-4": 5, "random": 10}
    assert rows["random"]["pretrain_epochs"] == 0 and rows["augmented"]["pretrain_epochs"] == 1
    for row in rows.values():
        assert set(row["scores"]) == set(rank.SCORES) and set(row["ranks"]) == {
            *rank.SCORES, "val_accuracy"}
        assert -math.log(10) <= row["scores"]["NCE"] <= 0 and row["scores"]["LEEP"] <= 0
        assert 0 <= row["val_accuracy_mean"] <= 1
        assert [run["seed"] for run in row["runs"]] == [0]
    accuracy = [rows[n]["val_accuracy_mean"] for n in names]
    assert [rows[n]["ranks"]["val_accuracy"] for n in names] == rank.ranks(accuracy)
    for score in rank.SCORES:
        values = [rows[n]["scores"][score] for n in names]
        assert [rows[n]["ranks"][score] for n in names] == rank.ranks(values)
        tau = meta["kendall_tau_b"][score]
        assert tau == pytest.approx(stats.kendalltau(values, accuracy).statistic, nan_ok=True)
    # Two candidates were pre-trained and cached (the untrained one needs no cache).
    assert len(list((tmp_path / "cache").glob("source-*.pt"))) == 2

    # The scores are those of the library on the candidate's features of the training split.
    model = rank._source_model(("digits0-4", _namespace(tmp_path), True))[0]
    assert model is not None  # loaded from the cache the run wrote
    data = digits_task()
    train = target_split(data.target_y, 2, 0)["train"]
    with torch.no_grad():
        features = model.features(data.target_x[train])
    expected = float(ranking.log_me(features, data.target_y[train]))
    assert rows["digits0-4"]["runs"][0]["scores"]["LogME"] == pytest.approx(expected, rel=1e-9)


def _namespace(tmp_path):
    parser = cli.build_parser()
    return parser.parse_args(["rank", "--cache-dir", str(tmp_path / "cache"), *FAST])


@pytest.mark.parametrize("options, message", [
    (["--shots", "0"], "expected a positive integer, got 0"),
    (["--candidates", "imagenet"], "invalid choice: 'imagenet'"),
    (["--workers", "-1"], "expected a positive integer, got -1"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        _rank(tmp_path, *options)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--candidates", "random"], "--candidates needs at least 2 source models to rank"),
    (["--shots", "60"], "--shots 60 needs at least 61 beside"),
    (["--device", "nowhere"], "--device 'nowhere' is not a torch device"),
])
def test_bad_input_is_one_error_line_and_status_2(tmp_path, capsys, options, message):
    status, _ = _rank(tmp_path, *options)
    err = capsys.readouterr().err
    assert status == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("tltorch-ext rank: error: ")


def test_worker_processes_pre_train_and_fine_tune_as_one_process_does(tmp_path):
    """The missing candidates pre-trained and the runs fine-tuned in two spawned workers give the
    scores and accuracies of one process, digit for digit."""
    outcomes = []
    for workers in ("1", "2"):
        argv = ["rank", "--out", str(tmp_path / workers), "--cache-dir",
                str(tmp_path / f"cache{workers}"), *FAST, "--seeds", "0", "1", "--candidates",
                "clean", "digits0-4", "--workers", workers]
        assert cli.main(argv) == 0
        meta = json.loads((tmp_path / workers / "results.json").read_text())
        assert meta["workers"] == int(workers)
        outcomes.append([(row["scores"], [(run["val_accuracy"], run["test_accuracy"])
                                          for run in row["runs"]]) for row in meta["candidates"]])
        assert len(list((tmp_path / f"cache{workers}").glob("source-*.pt"))) == 2
    assert outcomes[0] == outcomes[1]
