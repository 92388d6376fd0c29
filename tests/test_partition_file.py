"""partition = "file": clients get exactly the samples (and initial labels) a fal-partition/1 file names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fal_shared.config import ConfigError, parse_run_config
from fal_shared.data.classification import load_classification
from fal_shared.data.partition_file import read_partition_file, write_partition_file
from fal_shared.experiment_data import check_data, client_data

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "partition" / "dgitj-fal-mnist-alpha1.0-seed1.json"


def _digits_split(tmp_path: Path, k: int = 4, seed: int = 0, with_initial: bool = True) -> tuple[Path, list, list]:
    """A split of the embedded digits training set over k clients (every 3rd sample left out)."""
    y = load_classification("digits", "train").y
    rng = np.random.default_rng(seed)
    used = rng.permutation(len(y))[: 2 * len(y) // 3]
    parts = [np.sort(p) for p in np.array_split(used, k)]
    initial = [np.sort(rng.choice(p, size=7, replace=False)) for p in parts] if with_initial else None
    path = write_partition_file(tmp_path / "split.json", parts, num_train=len(y), labels=y, initial=initial,
                                dataset="digits", source="test")
    return path, parts, initial


def _cfg(path: Path, **extra):
    return parse_run_config({"dataset": "digits", "partition": "file", "partition-file": str(path), **extra})


def test_clients_get_the_files_samples_and_initial_labels(tmp_path):
    path, parts, initial = _digits_split(tmp_path)
    cfg = _cfg(path, **{"num-clients": 4})
    check_data(cfg)
    y = load_classification("digits", "train").y
    for pid in range(4):
        data = client_data(cfg, pid, 4)
        assert np.array_equal(data.ids, parts[pid])
        assert np.array_equal(data.y, y[parts[pid]])
        assert np.array_equal(data.initial_ids, initial[pid])


def test_without_initial_labels_the_seeded_draw_is_used(tmp_path):
    path, parts, _ = _digits_split(tmp_path, with_initial=False)
    data = client_data(_cfg(path), 1, 4)
    assert data.initial_ids is None and np.array_equal(data.ids, parts[1])


def test_inprocess_run_buys_the_files_initial_labels(tmp_path, small_run):
    from client_app.ledger import LabelLedger
    from client_app.session import INITIAL_TOKEN
    from server_app.inprocess import run_inprocess

    path, parts, initial = _digits_split(tmp_path, k=3)
    overrides = {**small_run, "train-subset-size": 0, "num-cycles": 1, "partition": "file",
                 "partition-file": str(path), "strategy": "random", "budget-mode": "count", "budget-count": 5}
    result = run_inprocess(overrides, num_clients=3)
    assert result["status"] == "completed"
    for pid in range(3):
        client = result["clients"][str(pid)]
        assert client["data-size"] == len(parts[pid]) and client["initial-labeled"] == len(initial[pid])
    ledger = LabelLedger(tmp_path / "state" / "test-run" / "partition-2.json", task="classification")
    assert ledger.purchase(INITIAL_TOKEN).tolist() == initial[2].tolist()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "format must be 'fal-partition/1'"),
    (lambda d: d.update({"num-train": 10}), "training split of 10 samples, but the data set has"),
    (lambda d: d.update(dataset="mnist"), "made for dataset 'mnist'"),
    (lambda d: d["clients"][1]["ids"].append(d["clients"][0]["ids"][0]), "is held by client 0 and client 1"),
    (lambda d: d["clients"][0]["ids"].append(100000), "ids outside"),
    (lambda d: d["clients"][0]["ids"].append(d["clients"][0]["ids"][0]), "twice"),
    (lambda d: d["clients"][0]["initial-labeled"].append(d["clients"][1]["ids"][0]), "initial-labeled must be distinct ids of its own"),
    (lambda d: d["clients"][0].pop("initial-labeled"), "for every client or for none"),
    (lambda d: d["clients"][2]["class-counts"].__setitem__(0, 999), "class counts"),
    (lambda d: d["clients"][0].update(ids=[]), "has no samples"),
    (lambda d: d["clients"][0].update(ids=["a"]), "must be a list of integers"),
])
def test_a_mismatched_file_fails_before_any_run_naming_the_problem(tmp_path, edit, message):
    path, _, _ = _digits_split(tmp_path)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        check_data(_cfg(path))


def test_missing_unreadable_or_wrong_sized_files_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        check_data(_cfg(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_data(_cfg(bad))
    path, _, _ = _digits_split(tmp_path)
    with pytest.raises(ValueError, match="has 4 clients, but the run has 5"):
        check_data(_cfg(path, **{"num-clients": 5}))
    with pytest.raises(ValueError, match="has 4 clients, but the run has 3"):
        client_data(_cfg(path), 0, 3)


def test_rewritten_file_is_read_again(tmp_path):
    path, parts, _ = _digits_split(tmp_path, seed=0)
    assert np.array_equal(client_data(_cfg(path), 0, 4).ids, parts[0])
    path2, parts2, _ = _digits_split(tmp_path, seed=1)  # same path, new content
    assert path2 == path and np.array_equal(client_data(_cfg(path), 0, 4).ids, parts2[0])


@pytest.mark.parametrize("overrides, message", [
    ({"partition": "file"}, 'needs partition-file'),
    ({"partition-file": "/x.json"}, 'set partition = "file"'),
    ({"partition": "file", "partition-file": "x.json"}, "must be an absolute path"),
    ({"partition": "file", "partition-file": "/x.json", "train-subset-size": 100}, "train-subset-size: must be 0"),
    ({"partition": "file", "partition-file": "/x.json", "long-tail-factor": 20.0}, "long-tail-factor: must be 1.0"),
    ({"partition": "file", "partition-file": "/x.json", "dataset": "diabetes"}, "for classification data sets"),
])
def test_run_config_checks(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_config(overrides)


def test_reference_fixture_reads_exactly_on_mnist(shared_datasets):
    """The dgitj/FAL partition of seed 1 (tests/fixtures/partition/README.md) is read as dumped, class counts checked."""
    root = str(shared_datasets / "mnist")
    doc = json.loads(FIXTURE.read_text())
    split = read_partition_file(str(FIXTURE), labels=load_classification("mnist", "train", root).y, dataset="mnist")
    assert split.num_clients == 10 and split.initial is not None
    cfg = parse_run_config({"dataset": "mnist", "data-root": root, "partition": "file", "partition-file": str(FIXTURE)})
    for pid, client in enumerate(doc["clients"]):
        data = client_data(cfg, pid, 10)
        assert data.ids.tolist() == sorted(client["ids"])
        assert data.initial_ids.tolist() == sorted(client["initial-labeled"])
        assert np.bincount(data.y, minlength=10).tolist() == client["class-counts"]
