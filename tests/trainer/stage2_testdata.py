"""MovieLens 100K through the Transform, once per test session, for the Stage II tests.

The log is read with transforms.readers and split by time: 80 % of rows before the train
cut-off, 10 % before the eval cut-off. transforms.preprocessing.preprocessing_fn analyses the
train split in-process (tft_beam on the DirectRunner). The train and eval splits are written
as GZIP TFRecords of transformed tf.Examples, as the TFX Transform component writes them.
The Stage I export is written here too, with random rows, so the Stage II tests do not
depend on Stage I training.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from transform_testdata import write_transformed_splits

from transforms import features, readers

_TYPES = {"string": tf.string, "int": tf.int64, "float": tf.float32}
_CACHE: dict[str, TransformedMovieLens] = {}


@dataclasses.dataclass(frozen=True)
class TransformedMovieLens:
    """Paths and raw rows of the transformed MovieLens 100K splits.

    Attributes:
      root: temporary folder holding everything below.
      transform_output: the Transform output folder (transform_fn/, transformed_metadata/).
      train_pattern, eval_pattern: file patterns of the transformed splits.
      raw_spec: the raw feature spec the Transform graph parses.
      train_rows, eval_rows: the canonical raw rows of each split.
    """

    root: str
    transform_output: str
    train_pattern: str
    eval_pattern: str
    raw_spec: dict
    train_rows: list[dict]
    eval_rows: list[dict]


def raw_feature_spec(column_types: dict[str, str]) -> dict:
    """Required columns are dense [1]; optional columns (side features) are VarLen."""
    spec = {}
    for key, kind in column_types.items():
        dtype = _TYPES[kind]
        if key in features.REQUIRED_COLUMNS:
            spec[key] = tf.io.FixedLenFeature([1], dtype)
        else:
            spec[key] = tf.io.VarLenFeature(dtype)
    return spec


def to_instance(row: dict, spec: dict) -> dict:
    """Return a canonical row as a TFT instance dict (lists of values)."""
    return {key: [] if row.get(key) is None else [row[key]] for key in spec}


def to_example(row: dict, spec: dict) -> tf.train.Example:
    """Return a canonical row as a raw tf.Example, leaving out missing values."""
    example = tf.train.Example()
    for key, value in row.items():
        if key not in spec or value is None:
            continue
        feature = example.features.feature[key]
        if spec[key].dtype == tf.string:
            feature.bytes_list.value.append(value.encode("utf-8"))
        elif spec[key].dtype == tf.int64:
            feature.int64_list.value.append(int(value))
        else:
            feature.float_list.value.append(float(value))
    return example


def split_by_time(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Return (train, eval): rows before the 80 % cut-off, and from it to the 90 % one."""
    timestamps = sorted(row[features.TIMESTAMP] for row in rows)
    train_cutoff = timestamps[int(0.8 * len(timestamps))]
    eval_cutoff = timestamps[int(0.9 * len(timestamps))]
    train = [row for row in rows if row[features.TIMESTAMP] < train_cutoff]
    evaluation = [row for row in rows if train_cutoff <= row[features.TIMESTAMP] < eval_cutoff]
    return train, evaluation


def transformed_movielens(movielens_dir) -> TransformedMovieLens:
    """Run the Transform on MovieLens 100K once per session and return its outputs."""
    key = str(movielens_dir)
    if key not in _CACHE:
        _CACHE[key] = _run_transform(key)
    return _CACHE[key]


def _run_transform(movielens_dir: str) -> TransformedMovieLens:
    root = tempfile.mkdtemp(prefix="idpt-stage2-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = list(readers.read_log(movielens_dir, readers.MOVIELENS_100K))
    spec = raw_feature_spec(readers.column_types(movielens_dir, readers.MOVIELENS_100K))
    train_rows, eval_rows = split_by_time(rows)
    transform_output, train_pattern, eval_pattern = write_transformed_splits(
        root,
        spec,
        [to_instance(row, spec) for row in train_rows],
        [to_instance(row, spec) for row in eval_rows],
    )
    return TransformedMovieLens(
        root=root,
        transform_output=transform_output,
        train_pattern=train_pattern,
        eval_pattern=eval_pattern,
        raw_spec=spec,
        train_rows=train_rows,
        eval_rows=eval_rows,
    )


def write_stage1_export(
    export_dir: str, tft_output: tft.TFTransformOutput, dimension: int, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Write an embedding export with random rows, as Stage I would on an older vocabulary.

    Of each Stage II vocabulary, every fifth token (indices 0, 5, 10, ...) is left out, and
    three tokens Stage II never saw are added, so the warm start meets a vocabulary that
    both grew and shrank.

    Returns:
      table -> the counts the warm start must report: copied, initialised, ignored.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for table in (features.USER_ID, features.ITEM_ID):
        tokens = [
            token.decode("utf-8")
            for token in tft_output.vocabulary_by_name(features.vocabulary_name(table))
        ]
        kept = [token for index, token in enumerate(tokens) if index % 5 != 0]
        unseen = [f"stage1-only-{table}-{index}" for index in range(3)]
        export_tokens = unseen[:1] + kept + unseen[1:]
        rows = len(export_tokens) + features.NUM_OOV_BUCKETS
        matrix = rng.normal(size=(rows, dimension)).astype(np.float32)

        table_dir = os.path.join(export_dir, table)
        os.makedirs(table_dir, exist_ok=True)
        tokens_path = os.path.join(table_dir, features.EMBEDDING_TOKENS_FILE)
        with open(tokens_path, "w", encoding="utf-8") as handle:
            handle.write("".join(token + "\n" for token in export_tokens))
        np.save(os.path.join(table_dir, features.EMBEDDING_MATRIX_FILE), matrix)
        expected[table] = {
            "copied": len(kept),
            "initialised": len(tokens) - len(kept),
            "ignored": len(unseen),
        }
    return expected


STAGE1_DIMENSION = 16
_BASE_MODELS: dict[str, tuple[str, dict[str, dict[str, int]]]] = {}


def stage1_base_model(data: TransformedMovieLens) -> tuple[str, dict[str, dict[str, int]]]:
    """Return (base_model, expected counts): a Stage I Format-Serving folder with an export.

    The folder holds only the embedding export (see `write_stage1_export`), which is all
    Stage II reads from it.
    """
    if data.root not in _BASE_MODELS:
        base_model = os.path.join(data.root, "stage1_model", "Format-Serving")
        tft_output = tft.TFTransformOutput(data.transform_output)
        expected = write_stage1_export(
            os.path.join(base_model, features.EMBEDDING_EXPORT_DIR), tft_output, STAGE1_DIMENSION
        )
        _BASE_MODELS[data.root] = (base_model, expected)
    return _BASE_MODELS[data.root]
