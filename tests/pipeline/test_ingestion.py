"""The ingestion component: time cut-offs, Example conversion and the executor on the cases.

Executor tests call `Executor.Do` directly with Beam's in-memory DirectRunner:
the same code LogIngestion runs inside a pipeline, without the orchestrator.
"""

import csv
import glob
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts

from tfx_pipeline.components import ingestion
from tfx_pipeline.config import SplitConfig
from transforms import features, readers
from transforms.log_mapping import ColumnMapping, LogFormatError

IN_MEMORY_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_cutoffs_by_rank():
    timestamps = np.array([5, 1, 4, 2, 3, 6, 7, 8, 9, 10])
    cutoffs = ingestion.compute_cutoffs(timestamps, SplitConfig())
    # Sorted: 1..10. T1 at rank floor(0.8 * 10) = 8 -> 9; T2 at rank floor(0.9 * 10) = 9 -> 10.
    assert (cutoffs.train_end, cutoffs.eval_end) == (9, 10)
    assert ingestion.count_splits(timestamps, cutoffs) == {"train": 8, "eval": 1, "test": 1}


def test_rows_tied_with_cutoff_go_later():
    timestamps = np.array([1, 1, 2, 2, 2, 3, 3, 3, 3, 4])
    cutoffs = ingestion.compute_cutoffs(timestamps, SplitConfig())
    # Rank 8 has value 3 and rank 9 value 4: every 3 goes to eval, so train has 5 rows, not 8.
    assert (cutoffs.train_end, cutoffs.eval_end) == (3, 4)
    assert ingestion.count_splits(timestamps, cutoffs) == {"train": 5, "eval": 4, "test": 1}


def test_explicit_cutoffs():
    split = SplitConfig(train_end=3, eval_end=4)
    cutoffs = ingestion.compute_cutoffs(np.array([1, 2, 3, 4, 5]), split)
    assert (cutoffs.train_end, cutoffs.eval_end) == (3, 4)
    assert cutoffs.split_of(2) == "train"
    assert cutoffs.split_of(3) == "eval"
    assert cutoffs.split_of(4) == "test"


def test_single_timestamp_names_empty_windows():
    timestamps = np.full(300, 1_700_000_000)
    cutoffs = ingestion.compute_cutoffs(timestamps, SplitConfig())
    counts = ingestion.count_splits(timestamps, cutoffs)

    with pytest.raises(ingestion.EmptySplitError) as error:
        ingestion.check_split_counts(counts, cutoffs, timestamps)
    assert str(error.value) == (
        "empty split window: train (timestamp < T1 = 1700000000); eval (T1 = 1700000000 <= "
        "timestamp < T2 = 1700000000). Cut-offs T1 = 1700000000, T2 = 1700000000 (fractions "
        "0.8/0.1/0.1 of 300 rows in time order); the log has 300 rows with timestamps "
        "1700000000..1700000000. Every split needs rows: give explicit cut-offs inside the "
        "log's time range (--train-end, --eval-end), or use a log whose timestamps span more "
        "than one value."
    )


def test_pretraining_window_checks():
    timestamps = np.array([10, 20, 30, 40])
    assert ingestion.count_pretraining_rows(timestamps, pretrain_end=20, train_end=30) == 2
    with pytest.raises(ValueError, match="pretrain_end 30 >= T1 30"):
        ingestion.count_pretraining_rows(timestamps, pretrain_end=30, train_end=30)
    with pytest.raises(ingestion.EmptySplitError, match="no row has timestamp <= pretrain_end 5"):
        ingestion.count_pretraining_rows(timestamps, pretrain_end=5, train_end=30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fractions": (0.8, 0.2, 0.0)}, "three shares > 0"),
        ({"fractions": (0.8, 0.1, 0.2)}, "must sum to 1"),
        ({"train_end": 5}, "need both T1 and T2"),
        ({"train_end": 5, "eval_end": 5}, "must be earlier than eval_end"),
        ({"train_end": 5, "eval_end": 9, "pretrain_end": 5}, "must end before the train cut-off"),
    ],
)
def test_split_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_split_config_json_round_trip():
    split = SplitConfig(fractions=(0.7, 0.2, 0.1), train_end=10, eval_end=20, pretrain_end=5)
    assert SplitConfig.from_json(split.to_json()) == split


def test_row_to_example_keeps_ids_as_bytes():
    types = {
        "user_id": "string",
        "item_id": "string",
        "timestamp": "int",
        "label": "int",
        "weight": "float",
        "item_price": "float",
        "user_country": "string",
    }
    row = {
        "user_id": "007",
        "item_id": "7.0",
        "timestamp": 1_700_000_000,
        "label": 1,
        "weight": 0.5,
        "item_price": math.nan,
        "user_country": None,
    }
    feature = ingestion.row_to_example(row, types).features.feature
    assert feature["user_id"].bytes_list.value == [b"007"]
    assert feature["item_id"].bytes_list.value == [b"7.0"]
    assert feature["timestamp"].int64_list.value == [1_700_000_000]
    assert feature["label"].int64_list.value == [1]
    assert feature["weight"].float_list.value == [0.5]
    assert math.isnan(feature["item_price"].float_list.value[0])
    assert "user_country" not in feature


def _run_executor(tmp_path, data, data_format=readers.CSV, split=None, mapping=None):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    context = ingestion.Executor.Context(
        beam_pipeline_args=IN_MEMORY_BEAM_ARGS, tmp_dir=str(tmp_path / "tmp"), unique_id="test"
    )
    exec_properties = {
        ingestion.DATA_KEY: str(data),
        ingestion.DATA_FORMAT_KEY: data_format,
        ingestion.COLUMN_MAPPING_KEY: mapping.to_json() if mapping else "",
        ingestion.SPLIT_CONFIG_KEY: (split or SplitConfig()).to_json(),
    }
    ingestion.Executor(context).Do({}, {ingestion.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _read_split(examples, split: str) -> list[tf.train.Example]:
    pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*.gz")
    files = sorted(glob.glob(pattern))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def _values(example: tf.train.Example, name: str):
    feature = example.features.feature[name]
    return list(getattr(feature, feature.WhichOneof("kind")).value)


def test_unsorted_log_split_by_global_cutoffs(cases_dir, tmp_path):
    examples = _run_executor(tmp_path, cases_dir / "unsorted_timestamps.csv")

    # Reference: the cut-offs by rank over the file's own timestamps.
    with open(cases_dir / "unsorted_timestamps.csv", encoding="utf-8") as file:
        timestamps = sorted(int(row["timestamp"]) for row in csv.DictReader(file))
    train_end, eval_end = timestamps[400], timestamps[450]  # floor(0.8 * 500), floor(0.9 * 500)

    split_timestamps = {
        split: [_values(example, "timestamp")[0] for example in _read_split(examples, split)]
        for split in features.SPLITS
    }
    assert max(split_timestamps["train"]) < train_end
    assert min(split_timestamps["eval"]) >= train_end
    assert max(split_timestamps["eval"]) < eval_end
    assert min(split_timestamps["test"]) >= eval_end
    expected = {
        "train": sum(t < train_end for t in timestamps),
        "eval": sum(train_end <= t < eval_end for t in timestamps),
        "test": sum(t >= eval_end for t in timestamps),
    }
    assert {split: len(values) for split, values in split_timestamps.items()} == expected

    report = ingestion.load_report(examples.uri)
    assert report["rows_per_split"] == expected
    assert (report["train_end"], report["eval_end"]) == (train_end, eval_end)
    assert report["rows_read"] == 500
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval", "test"]
    assert examples.get_int_custom_property("rows_train") == expected["train"]


def test_single_timestamp_fails_before_writing(cases_dir, tmp_path):
    with pytest.raises(ingestion.EmptySplitError, match=r"^empty split window: train \(timestamp"):
        _run_executor(tmp_path, cases_dir / "single_timestamp.csv")
    assert not os.path.exists(tmp_path / "examples" / "Split-train")


def test_empty_ids_dropped_and_counted(cases_dir, tmp_path):
    examples = _run_executor(tmp_path, cases_dir / "empty_ids.csv")
    report = ingestion.load_report(examples.uri)
    assert (report["rows_read"], report["rows_kept"], report["rows_dropped"]) == (200, 196, 4)
    assert sum(report["dropped"].values()) == 4
    assert sum(report["rows_per_split"].values()) == 196
    written = sum(len(_read_split(examples, split)) for split in features.SPLITS)
    assert written == 196


def test_numeric_looking_and_odd_ids_written_exactly(cases_dir, tmp_path):
    looking = _run_executor(tmp_path / "looking", cases_dir / "numeric_looking_ids.csv")
    odd = _run_executor(tmp_path / "odd", cases_dir / "odd_id_strings.csv")

    def ids(examples, name):
        return {
            value.decode("utf-8")
            for split in features.SPLITS
            for example in _read_split(examples, split)
            for value in _values(example, name)
        }

    assert {"007", "7", "7.0"} <= ids(looking, "item_id")
    odd_items = {"crème brûlée", "item, with comma", 'quote"inside', "x" * 1500}
    assert odd_items <= ids(odd, "item_id")
    assert "用户42" in ids(odd, "user_id")


def test_unreadable_logs_raise_format_errors(cases_dir, tmp_path):
    with pytest.raises(LogFormatError, match="index_column.csv"):
        _run_executor(tmp_path / "index", cases_dir / "index_column.csv")
    with pytest.raises(LogFormatError, match="label"):
        _run_executor(tmp_path / "labels", cases_dir / "bad_labels.csv")


def test_missing_numeric_values_counted(cases_dir, tmp_path):
    mapping = ColumnMapping(
        side_features=((features.ITEM_PRICE, features.ITEM_PRICE),),
        numeric_features=(features.ITEM_PRICE,),
    )
    examples = _run_executor(tmp_path, cases_dir / "numeric_feature_nan_inf.csv", mapping=mapping)
    report = ingestion.load_report(examples.uri)
    # NaN, inf and the empty value are missing; the rows are kept without the feature.
    assert report["missing_values"] == {features.ITEM_PRICE: 3}
    assert report["rows_kept"] == 300
    written = [example for split in features.SPLITS for example in _read_split(examples, split)]
    assert sum(features.ITEM_PRICE not in e.features.feature for e in written) == 3
    assert json.loads(json.dumps(report)) == report


def test_fingerprint_follows_file_changes(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,label\nu1,i1,1,1\n")
    before = ingestion.data_fingerprint(str(log), readers.CSV)
    assert ingestion.data_fingerprint(str(log), readers.CSV) == before

    log.write_text("user_id,item_id,timestamp,label\nu1,i1,1,1\nu2,i1,2,0\n")
    assert ingestion.data_fingerprint(str(log), readers.CSV) != before
    assert ingestion.data_fingerprint("synthetic:rows=10", readers.SYNTHETIC) == "synthetic:rows=10"
