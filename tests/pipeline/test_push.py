"""The pusher's version numbering, atomic copy, warmup and user history."""

import json
import os

import pytest
import tensorflow as tf

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
