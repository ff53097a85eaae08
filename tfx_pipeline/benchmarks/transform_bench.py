"""Transform throughput: rows per second of `preprocessing_fn` analyze + transform.

Generates synthetic logs, writes them as the ingestion does (gzipped TFRecords of
tf.Example, one file), then times TFT's AnalyzeAndTransformDataset over them on
Beam's DirectRunner with the pipeline's default options, including writing the
transformed examples and the transform graph. Generation and writing the input
are not timed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from tfx_pipeline.components.ingestion import row_to_example
from tfx_pipeline.config import DEFAULT_BEAM_PIPELINE_ARGS
from transforms import features, preprocessing, readers

TITLE = "Transform throughput"
NOTES = (
    "Rows per second of TFT analyze + transform with `transforms.preprocessing.preprocessing_fn` "
    "on synthetic logs (DirectRunner, "
    + " ".join(DEFAULT_BEAM_PIPELINE_ARGS)
    + "), reading gzipped tf.Example TFRecords and writing transformed examples. "
    "Input generation is not timed."
)
QUICK_SIZES = (100_000,)
FULL_SIZES = (100_000, 1_000_000)


def run(output_dir: str, quick: bool, sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Time Transform on generated logs of each size.

    Args:
      output_dir: folder for the generated input and the Transform output.
      quick: 100K rows only; otherwise 100K and 1M.
      sizes: row counts overriding `quick` (small ones are for smoke tests).

    Returns:
      "<rows> rows: seconds" and "<rows> rows: rows/s" for every size.
    """
    figures: dict[str, Any] = {}
    for rows in sizes or (QUICK_SIZES if quick else FULL_SIZES):
        folder = os.path.join(output_dir, f"rows-{rows}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        examples_path, feature_spec = _write_examples(rows, folder)
        seconds = _time_transform(examples_path, feature_spec, folder)
        figures[f"{rows:,} rows: seconds"] = round(seconds, 1)
        figures[f"{rows:,} rows: rows/s"] = round(rows / seconds, 1)
    return figures


def _write_examples(rows: int, folder: str) -> tuple[str, dict[str, Any]]:
    data = f"{readers.SYNTHETIC}:rows={rows}"
    column_types = readers.column_types(data, readers.SYNTHETIC)
    path = os.path.join(folder, "examples.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in readers.read_log(data, readers.SYNTHETIC):
            writer.write(row_to_example(row, column_types).SerializeToString())
    return path, _feature_spec(column_types)


def _feature_spec(column_types: dict[str, str]) -> dict[str, Any]:
    """Return the feature spec the curated schema gives these columns."""
    dtypes = {"string": tf.string, "int": tf.int64, "float": tf.float32}
    spec = {}
    for name, kind in column_types.items():
        if name in features.REQUIRED_COLUMNS:
            spec[name] = tf.io.FixedLenFeature([1], dtypes[kind])
        else:
            spec[name] = tf.io.VarLenFeature(dtypes[kind])
    return spec


def _time_transform(examples_path: str, feature_spec: dict[str, Any], folder: str) -> float:
    schema = schema_utils.schema_from_feature_spec(feature_spec)
    source = tfxio.TFExampleRecord(file_pattern=examples_path, schema=schema)
    options = PipelineOptions(list(DEFAULT_BEAM_PIPELINE_ARGS))
    start = time.perf_counter()
    temp_dir = os.path.join(folder, "tmp")
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=temp_dir):
        raw = pipeline | "Read" >> source.BeamSource()
        (transformed, metadata), transform_fn = (
            raw,
            source.TensorAdapterConfig(),
        ) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn, output_record_batches=False
        )
        coder = tft.coders.ExampleProtoCoder(metadata.schema)
        _ = (
            transformed
            | "Encode" >> beam.Map(coder.encode)
            | "Write"
            >> beam.io.WriteToTFRecord(
                os.path.join(folder, "transformed", "part"), file_name_suffix=".gz"
            )
        )
        _ = transform_fn | tft_beam.WriteTransformFn(os.path.join(folder, "transform_graph"))
    return time.perf_counter() - start
