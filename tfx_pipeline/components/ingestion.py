"""Log ingestion: an ExampleGen-style Beam component that splits a raw log by time.

Unlike CsvExampleGen, it reads through `transforms.readers`, so ids stay exact
strings ("007", "7" and "7.0" are three ids), every format and column mapping of
the readers works, and dropped rows are counted by reason.

The executor makes two passes over the log:
  1. A streaming pass in the executor process collects every kept row's timestamp
     into a NumPy array, and the read report. The global cut-offs T1 and T2 come
     from that array, so an empty split window fails here, before Beam starts.
  2. A Beam pipeline reads the shards again, converts rows to tf.Example and writes
     train (timestamp < T1), eval (T1 <= timestamp < T2) and test (timestamp >= T2)
     as gzipped TFRecords in the standard Examples layout (Split-<name>/), which
     StatisticsGen and Transform read.

Cut-off rule with fractions (f_train, f_eval, f_test) over N kept rows in time
order: T1 is the timestamp at 0-based rank floor(f_train * N) and T2 the one at
rank floor((f_train + f_eval) * N). Rows tied with a cut-off go to the later
split, so train holds at most floor(f_train * N) rows.

The run report (rows read, dropped by reason, kept per split, cut-offs) is
written as INGESTION_REPORT_FILE at the root of the Examples artifact and logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from array import array
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import Channel, artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_pipeline.config import SplitConfig, check_pretrain_end
from transforms import features, readers
from transforms.log_mapping import ColumnMapping, ReadReport

INGESTION_REPORT_FILE = "ingestion_report.json"
EXAMPLES_FILE_PREFIX = "data_tfrecord"
EXAMPLES_FILE_SUFFIX = ".gz"
FILE_FORMAT = "tfrecords_gzip"
COUNTER_NAMESPACE = "idpt_ingestion"
_MOVIELENS_FORMATS = (readers.MOVIELENS_100K, readers.MOVIELENS_DAT, readers.MOVIELENS_CSV)

# Execution parameter and output names.
DATA_KEY = "data"
DATA_FORMAT_KEY = "data_format"
COLUMN_MAPPING_KEY = "column_mapping"
SPLIT_CONFIG_KEY = "split_config"
DATA_FINGERPRINT_KEY = "data_fingerprint"
EXAMPLES_KEY = "examples"


class EmptySplitError(ValueError):
    """A split window (train, eval, test or pre-training) contains no row."""


@dataclasses.dataclass(frozen=True)
class TimeCutoffs:
    """Global time cut-offs: train < train_end (T1) <= eval < eval_end (T2) <= test.

    Attributes:
      train_end: T1, seconds since the epoch.
      eval_end: T2, seconds since the epoch.
      rule: how the cut-offs were obtained, for messages and the report.
    """

    train_end: int
    eval_end: int
    rule: str

    def split_of(self, timestamp: int) -> str:
        """Return the split name of a row with this timestamp."""
        if timestamp < self.train_end:
            return features.TRAIN_SPLIT
        if timestamp < self.eval_end:
            return features.EVAL_SPLIT
        return features.TEST_SPLIT

    def windows(self) -> dict[str, str]:
        """Return each split's window as text, e.g. "timestamp < 1700000000"."""
        return {
            features.TRAIN_SPLIT: f"timestamp < T1 = {self.train_end}",
            features.EVAL_SPLIT: f"T1 = {self.train_end} <= timestamp < T2 = {self.eval_end}",
            features.TEST_SPLIT: f"timestamp >= T2 = {self.eval_end}",
        }


def compute_cutoffs(timestamps: np.ndarray, split: SplitConfig) -> TimeCutoffs:
    """Return the global cut-offs of a log by the rule in the module docstring.

    Args:
      timestamps: int64 timestamps of every kept row, in any order.
      split: fractions or explicit cut-offs.

    Returns:
      The cut-offs.

    Raises:
      EmptySplitError: the log has no row.
    """
    if split.explicit:
        return TimeCutoffs(split.train_end, split.eval_end, "explicit T1 and T2")
    count = len(timestamps)
    if count == 0:
        raise EmptySplitError(
            "no readable row in the log, so no time split is possible: check the read report's "
            "drop reasons and the column mapping."
        )

    train_rank = math.floor(split.fractions[0] * count)
    eval_rank = math.floor((split.fractions[0] + split.fractions[1]) * count)
    ranks = [min(train_rank, count - 1), min(eval_rank, count - 1)]
    # np.partition places the values at these ranks as a full sort would, in O(N).
    ordered = np.partition(timestamps, ranks)
    fractions = "/".join(f"{fraction:g}" for fraction in split.fractions)
    return TimeCutoffs(
        train_end=int(ordered[ranks[0]]),
        eval_end=int(ordered[ranks[1]]),
        rule=f"fractions {fractions} of {count} rows in time order",
    )


def count_splits(timestamps: np.ndarray, cutoffs: TimeCutoffs) -> dict[str, int]:
    """Return the number of rows in each split window."""
    train = int(np.count_nonzero(timestamps < cutoffs.train_end))
    before_eval_end = int(np.count_nonzero(timestamps < cutoffs.eval_end))
    return {
        features.TRAIN_SPLIT: train,
        features.EVAL_SPLIT: before_eval_end - train,
        features.TEST_SPLIT: len(timestamps) - before_eval_end,
    }


def check_split_counts(
    counts: Mapping[str, int], cutoffs: TimeCutoffs, timestamps: np.ndarray
) -> None:
    """Raise EmptySplitError naming every empty split window and the cut-offs."""
    empty = [name for name in features.SPLITS if counts[name] == 0]
    if not empty:
        return
    windows = cutoffs.windows()
    described = "; ".join(f"{name} ({windows[name]})" for name in empty)
    span = (
        f"timestamps {int(timestamps.min())}..{int(timestamps.max())}"
        if len(timestamps)
        else "no timestamps"
    )
    raise EmptySplitError(
        f"empty split window: {described}. Cut-offs T1 = {cutoffs.train_end}, "
        f"T2 = {cutoffs.eval_end} ({cutoffs.rule}); the log has {len(timestamps)} rows with "
        f"{span}. Every split needs rows: give explicit cut-offs inside the log's time "
        "range (--train-end, --eval-end), or use a log whose timestamps span more than "
        "one value."
    )


def count_pretraining_rows(timestamps: np.ndarray, pretrain_end: int, train_end: int) -> int:
    """Return the rows of the pre-training window (timestamp <= pretrain_end).

    Raises:
      ValueError: the window does not end before T1.
      EmptySplitError: the window has no row.
    """
    check_pretrain_end(pretrain_end, train_end)
    rows = int(np.count_nonzero(timestamps <= pretrain_end))
    if rows == 0:
        raise EmptySplitError(
            f"empty pre-training window: no row has timestamp <= pretrain_end "
            f"{pretrain_end} (earliest timestamp {int(timestamps.min())}, T1 {train_end}). "
            "Pass a later pretrain end, or none to pre-train on the whole train split."
        )
    return rows


def row_to_example(row: Mapping[str, Any], column_types: Mapping[str, str]) -> tf.train.Example:
    """Convert one canonical row to a tf.Example.

    Args:
      row: a row from `transforms.readers.read_shard`.
      column_types: canonical name -> "string" | "int" | "float" (readers.column_types).

    Returns:
      An Example with one value per present column: strings as UTF-8 bytes, "int"
      columns as int64, "float" columns as float (NaN and inf kept as read). A
      missing (None) value leaves the feature out.
    """
    example = tf.train.Example()
    feature_map = example.features.feature
    for name, kind in column_types.items():
        value = row.get(name)
        if value is None:
            continue
        if kind == "string":
            feature_map[name].bytes_list.value.append(str(value).encode("utf-8"))
        elif kind == "int":
            feature_map[name].int64_list.value.append(int(value))
        else:
            feature_map[name].float_list.value.append(float(value))
    return example


def scan_timestamps(
    data: str, data_format: str, mapping: ColumnMapping | None
) -> tuple[np.ndarray, ReadReport]:
    """Read the whole log once, streaming, and return every kept row's timestamp.

    Returns:
      An int64 array of timestamps in read order (8 bytes per row), and the read
      report of the whole log.
    """
    report = ReadReport()
    values = array("q")
    for row in readers.read_log(data, data_format, mapping, report):
        values.append(row[features.TIMESTAMP])
    return np.frombuffer(values, dtype=np.int64) if values else np.zeros(0, np.int64), report


def data_fingerprint(data: str, data_format: str) -> str:
    """Return a fingerprint of the log's files (paths, sizes, modification times).

    The pipeline passes it as an execution parameter, so a cached ingestion result
    is reused only while the files are unchanged. MovieLens shards also cover the
    other files of their folder (u.user, u.item, movies.csv, ...), which the
    readers join in. A synthetic spec is its own fingerprint.
    """
    if data_format == readers.SYNTHETIC:
        return data
    files = set(readers.list_shards(data, data_format))
    if data_format in _MOVIELENS_FORMATS:
        for shard in list(files):
            folder = os.path.dirname(os.path.abspath(shard))
            files.update(os.path.join(folder, name) for name in os.listdir(folder))
    digest = hashlib.sha256()
    for path in sorted(os.path.abspath(file) for file in files if os.path.isfile(file)):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class _ShardToExamples(beam.DoFn):
    """Read one shard and emit serialized Examples tagged with their split name."""

    def __init__(
        self,
        data_format: str,
        mapping_json: str,
        column_types: Mapping[str, str],
        cutoffs: TimeCutoffs,
    ):
        self._data_format = data_format
        self._mapping_json = mapping_json
        self._column_types = dict(column_types)
        self._cutoffs = cutoffs

    def process(self, shard: str) -> Iterator[beam.pvalue.TaggedOutput]:
        mapping = ColumnMapping.from_json(self._mapping_json) if self._mapping_json else None
        report = ReadReport()
        counters = {
            name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name) for name in features.SPLITS
        }
        for row in readers.read_shard(shard, self._data_format, mapping, report):
            split = self._cutoffs.split_of(row[features.TIMESTAMP])
            counters[split].inc()
            example = row_to_example(row, self._column_types)
            yield beam.pvalue.TaggedOutput(split, example.SerializeToString())


class IngestionSpec(ComponentSpec):
    """Parameters and output of LogIngestion."""

    PARAMETERS = {
        DATA_KEY: ExecutionParameter(type=str),
        DATA_FORMAT_KEY: ExecutionParameter(type=str),
        COLUMN_MAPPING_KEY: ExecutionParameter(type=str, optional=True),
        SPLIT_CONFIG_KEY: ExecutionParameter(type=str),
        DATA_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_beam_executor.BaseBeamExecutor):
    """Splits a raw log by global time cut-offs into train, eval and test Examples."""

    def Do(  # noqa: N802 (the TFX executor interface)
        self,
        input_dict: dict[str, list[Any]],
        output_dict: dict[str, list[Any]],
        exec_properties: dict[str, Any],
    ) -> None:
        """Run both passes and write the splits and the run report.

        Raises:
          EmptySplitError: a split window or the pre-training window is empty.
          transforms.log_mapping.LogFormatError: the log cannot be read.
        """
        data = exec_properties[DATA_KEY]
        data_format = exec_properties[DATA_FORMAT_KEY]
        mapping_json = exec_properties.get(COLUMN_MAPPING_KEY) or ""
        mapping = ColumnMapping.from_json(mapping_json) if mapping_json else None
        split = SplitConfig.from_json(exec_properties[SPLIT_CONFIG_KEY])
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])

        logging.info("Ingestion: scanning %s (%s) for time cut-offs.", data, data_format)
        column_types = readers.column_types(data, data_format, mapping)
        timestamps, read_report = scan_timestamps(data, data_format, mapping)
        cutoffs = compute_cutoffs(timestamps, split)
        counts = count_splits(timestamps, cutoffs)
        check_split_counts(counts, cutoffs, timestamps)
        pretraining_rows = None
        if split.pretrain_end is not None:
            pretraining_rows = count_pretraining_rows(
                timestamps, split.pretrain_end, cutoffs.train_end
            )

        report = _run_report(data, data_format, read_report, cutoffs, counts, timestamps)
        report["pretrain_end"] = split.pretrain_end
        report["pretraining_rows"] = pretraining_rows
        logging.info(
            "Ingestion: cut-offs T1=%d T2=%d (%s); rows per split %s.",
            cutoffs.train_end,
            cutoffs.eval_end,
            cutoffs.rule,
            counts,
        )

        written = self._write_splits(
            data, data_format, mapping_json, column_types, cutoffs, examples
        )
        _check_written_counts(counts, written)
        _set_properties(examples, cutoffs, counts, split.pretrain_end)
        _write_report(examples.uri, report)

    def _write_splits(
        self,
        data: str,
        data_format: str,
        mapping_json: str,
        column_types: Mapping[str, str],
        cutoffs: TimeCutoffs,
        examples: Any,
    ) -> dict[str, int] | None:
        """Run the Beam pass; return the rows written per split, or None without metrics."""
        examples.split_names = artifact_utils.encode_split_names(list(features.SPLITS))
        shards = readers.list_shards(data, data_format)
        pipeline = self._make_beam_pipeline()
        tagged = (
            pipeline
            | "Shards" >> beam.Create(shards)
            # Spread shards over workers before the expensive read.
            | "Distribute" >> beam.Reshuffle()
            | "ReadAndSplit"
            >> beam.ParDo(
                _ShardToExamples(data_format, mapping_json, column_types, cutoffs)
            ).with_outputs(*features.SPLITS)
        )
        for name in features.SPLITS:
            prefix = os.path.join(
                artifact_utils.get_split_uri([examples], name), EXAMPLES_FILE_PREFIX
            )
            _ = tagged[name] | f"Write[{name}]" >> beam.io.WriteToTFRecord(
                prefix, file_name_suffix=EXAMPLES_FILE_SUFFIX
            )
        result = pipeline.run()
        result.wait_until_finish()
        return _written_counts(result)


class LogIngestion(base_beam_component.BaseBeamComponent):
    """Reads a raw log through transforms.readers and writes time-split Examples.

    Output `examples`: Examples with splits train, eval and test (gzipped
    TFRecords of tf.Example) and INGESTION_REPORT_FILE at the artifact root.
    """

    SPEC_CLASS = IngestionSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        data: str,
        data_format: str,
        split: SplitConfig,
        mapping: ColumnMapping | None = None,
        fingerprint: str | None = None,
    ):
        """Configure the ingestion.

        Args:
          data: log path or synthetic spec (see transforms.readers).
          data_format: one of transforms.readers.FORMATS.
          split: time split settings.
          mapping: column mapping; None uses the format's default.
          fingerprint: `data_fingerprint(data, data_format)`, so that cached results
            are reused only while the log's files are unchanged.
        """
        spec = IngestionSpec(
            data=data,
            data_format=data_format,
            column_mapping=mapping.to_json() if mapping is not None else "",
            split_config=split.to_json(),
            data_fingerprint=fingerprint or "",
            examples=Channel(type=standard_artifacts.Examples),
        )
        super().__init__(spec=spec)


def _run_report(
    data: str,
    data_format: str,
    read_report: ReadReport,
    cutoffs: TimeCutoffs,
    counts: Mapping[str, int],
    timestamps: np.ndarray,
) -> dict[str, Any]:
    return {
        "data": data,
        "data_format": data_format,
        **read_report.to_dict(),
        "rows_per_split": dict(counts),
        "train_end": cutoffs.train_end,
        "eval_end": cutoffs.eval_end,
        "cutoff_rule": cutoffs.rule,
        "split_windows": cutoffs.windows(),
        "first_timestamp": int(timestamps.min()),
        "last_timestamp": int(timestamps.max()),
    }


def _written_counts(result: Any) -> dict[str, int] | None:
    try:
        query = result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(COUNTER_NAMESPACE)
        )
    except (NotImplementedError, AttributeError):
        return None
    counts = {name: 0 for name in features.SPLITS}
    for counter in query["counters"]:
        counts[counter.key.metric.name] += counter.committed or 0
    return counts


def _check_written_counts(expected: Mapping[str, int], written: Mapping[str, int] | None) -> None:
    """Raise RuntimeError when the Beam pass wrote other counts than the scan found."""
    if written is None:
        logging.warning("Ingestion: the Beam runner reports no metrics; split sizes unchecked.")
        return
    if dict(written) != dict(expected):
        raise RuntimeError(
            f"the log changed between the two ingestion passes: the scan found {dict(expected)} "
            f"rows per split but {dict(written)} were written. Rerun on a log that is not "
            "being written to."
        )


def _set_properties(
    examples: Any, cutoffs: TimeCutoffs, counts: Mapping[str, int], pretrain_end: int | None
) -> None:
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, FILE_FORMAT)
    examples.set_int_custom_property("train_end", cutoffs.train_end)
    examples.set_int_custom_property("eval_end", cutoffs.eval_end)
    if pretrain_end is not None:
        examples.set_int_custom_property("pretrain_end", pretrain_end)
    for name, count in counts.items():
        examples.set_int_custom_property(f"rows_{name}", count)


def _write_report(uri: str, report: Mapping[str, Any]) -> None:
    text = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False)
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, INGESTION_REPORT_FILE), "w") as file:
        file.write(text + "\n")
    logging.info("Ingestion report:\n%s", text)


def load_report(examples_uri: str) -> dict[str, Any]:
    """Return the run report stored in an Examples artifact written by LogIngestion."""
    with tf.io.gfile.GFile(os.path.join(examples_uri, INGESTION_REPORT_FILE)) as file:
        return json.loads(file.read())
