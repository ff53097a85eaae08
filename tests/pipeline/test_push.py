"""The pusher's version numbering, atomic copy, warmup and user history."""

import json
import os

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from tfx_pipeline.components import push
from transforms import features


def write_saved_model_stub(folder) -> str:
    # The pusher copies folders and never loads them, so any files stand in here.
    os.makedirs(os.path.join(folder, "variables"))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as file:
        file.write(b"graph")
    return str(folder)


def test_next_version_above_existing(tmp_path, monkeypatch):
    monkeypatch.setattr(push.time, "time", lambda: 1000.5)
    (tmp_path / "999").mkdir()
    (tmp_path / "1005").mkdir()
    (tmp_path / ".1006.incomplete").mkdir()

    # max(int(1000.5), 1005 + 1): a newer version never sorts below an older one.
    assert push.next_version(str(tmp_path)) == 1006


def test_next_version_uses_clock_when_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(push.time, "time", lambda: 1234.9)

    assert push.next_version(str(tmp_path / "ranking")) == 1234


def test_push_copies_with_warmup_and_history(tmp_path, monkeypatch):
    monkeypatch.setattr(push.time, "time", lambda: 50.0)
    source = write_saved_model_stub(tmp_path / "model")
    warmup = tmp_path / "warmup"
    warmup.write_bytes(b"records")

    version_dir = push.push_saved_model(
        source,
        str(tmp_path / "serving" / "retrieval"),
        str(warmup),
        {"u2": {"b", "a"}, "u1": set()},
    )

    assert version_dir == str(tmp_path / "serving" / "retrieval" / "50")
    assert sorted(os.listdir(tmp_path / "serving" / "retrieval")) == ["50"]
    assert (tmp_path / "serving/retrieval/50/saved_model.pb").read_bytes() == b"graph"
    assert (tmp_path / "serving/retrieval/50" / features.WARMUP_FILE).read_bytes() == b"records"
    lines = (tmp_path / "serving/retrieval/50" / features.USER_HISTORY_FILE).read_text()
    assert [json.loads(line) for line in lines.splitlines()] == [
        {features.USER_ID: "u1", features.USER_HISTORY_ITEMS_KEY: []},
        {features.USER_ID: "u2", features.USER_HISTORY_ITEMS_KEY: ["a", "b"]},
    ]


def test_failed_copy_leaves_no_version(tmp_path):
    with pytest.raises(FileNotFoundError):
        push.push_saved_model(str(tmp_path / "missing"), str(tmp_path / "ranking"), None)

    assert [name for name in os.listdir(tmp_path / "ranking") if name.isdigit()] == []


def test_train_history_keeps_engaged_rows(tmp_path):
    split = tmp_path / f"Split-{features.TRAIN_SPLIT}"
    split.mkdir()
    rows = [("007", "7", 1), ("007", "7.0", 0), ("007", "x y", 1), ("u2", "7", 1)]
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for user, item, label in rows:
            example = tf.train.Example()
            example.features.feature[features.USER_ID].bytes_list.value.append(user.encode())
            example.features.feature[features.ITEM_ID].bytes_list.value.append(item.encode())
            example.features.feature[features.LABEL].int64_list.value.append(label)
            writer.write(example.SerializeToString())

    assert push.read_train_history(str(tmp_path)) == {"007": {"7", "x y"}, "u2": {"7"}}


def _artifact(kind, uri, blessed=None):
    artifact = kind()
    artifact.uri = str(uri)
    if blessed is not None:
        artifact.set_int_custom_property(push.BLESSED_PROPERTY, blessed)
    return artifact


def _push_retrieval(tmp_path, model_uri):
    pushed = _artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
    push._push_one(
        features.RETRIEVAL_MODEL_NAME,
        _artifact(standard_artifacts.Model, model_uri),
        _artifact(standard_artifacts.ModelBlessing, tmp_path / "gate", blessed=1),
        _artifact(standard_artifacts.InfraBlessing, tmp_path / "infra", blessed=1),
        str(tmp_path / "serving"),
        pushed,
    )
    return pushed


def test_push_records_its_source(tmp_path, monkeypatch):
    monkeypatch.setattr(push.time, "time", lambda: 70.0)
    source = write_saved_model_stub(tmp_path / "model")
    model_dir = str(tmp_path / "serving" / "ranking")

    assert push.latest_version_from(model_dir, source) is None
    version_dir = push.push_saved_model(source, model_dir, None)

    recorded = (tmp_path / "serving/ranking/70" / features.PUSH_SOURCE_FILE).read_text()
    assert recorded == os.path.abspath(source) + "\n"
    assert push.latest_version_from(model_dir, source) == version_dir
    assert push.latest_version_from(model_dir, str(tmp_path / "other")) is None


def test_cached_model_not_pushed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(push.time, "time", lambda: 80.0)
    write_saved_model_stub(tmp_path / "first" / push.SERVING_MODEL_FOLDER)
    write_saved_model_stub(tmp_path / "second" / push.SERVING_MODEL_FOLDER)

    first = _push_retrieval(tmp_path, tmp_path / "first")
    assert first.get_int_custom_property("pushed") == 1
    assert first.get_string_custom_property("pushed_version") == "80"

    # A rerun with the cached first model: version 80 still serves it.
    again = _push_retrieval(tmp_path, tmp_path / "first")
    assert again.get_int_custom_property("pushed") == 0
    assert again.get_string_custom_property(push.REASON_PROPERTY) == (
        "version 80 already serves it"
    )
    assert os.listdir(tmp_path / "serving" / features.RETRIEVAL_MODEL_NAME) == ["80"]

    second = _push_retrieval(tmp_path, tmp_path / "second")
    assert second.get_string_custom_property("pushed_version") == "81"
