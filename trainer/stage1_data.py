"""Reading the Transform output for Stage I: vocabularies, counts and example datasets.

Stage I reads the transformed examples that the Transform component writes (gzipped
TFRecord files of tf.Example, one folder per split) and the Transform graph's vocabulary
files. The names follow the Transform output contract in `transforms.features`: ids arrive
as int64 vocabulary indices under `transformed_name(key)`, where index V (the vocabulary
size) is the OOV index, next to the raw label, the optional weight and the derived item
features.

The datasets yield one dict per row, keyed by those feature names. Training rows are the
train split's engaged rows (label 1); eval rows are the eval split's engaged rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from transforms import features, preprocessing

USER_IDS = features.transformed_name(features.USER_ID)
ITEM_IDS = features.transformed_name(features.ITEM_ID)

_READ_BATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The Transform vocabulary of one raw feature, in row order.

    Attributes:
      key: The raw feature key, also the name of its embedding table.
      tokens: Tokens as bytes; token r indexes row r of the table.
    """

    key: str
    tokens: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """Number of tokens V; the OOV index is V."""
        return len(self.tokens)

    @property
    def rows(self) -> int:
        """Table rows: the tokens plus the OOV buckets."""
        return self.size + features.NUM_OOV_BUCKETS

    @property
    def oov_index(self) -> int:
        """Index that Transform gives an unseen or missing id."""
        return self.size


@dataclasses.dataclass(frozen=True)
class Stage1Inputs:
    """Data locations of a Stage I run.

    Attributes:
      train_files: File patterns of the transformed train split.
      eval_files: File patterns of the transformed eval split.
      transform_output: The Transform graph folder (TFTransformOutput).
    """

    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    transform_output: str


def load_vocabulary(tft_output, key: str) -> Vocabulary:
    """Read the Transform vocabulary of raw feature `key`.

    Args:
      tft_output: A `tft.TFTransformOutput`.
      key: Raw feature key, e.g. `features.USER_ID`.

    Returns:
      The vocabulary in row order.

    Raises:
      ValueError: The vocabulary is empty.
    """
    name = features.vocabulary_name(key)
    tokens = tuple(tft_output.vocabulary_by_name(name))
    # TFT writes one placeholder token in place of an empty vocabulary.
    if not tokens or tokens == (preprocessing.EMPTY_VOCABULARY_PLACEHOLDER,):
        raise ValueError(
            f"Transform vocabulary {name!r} is empty: Stage I needs at least one {key} in the "
            "train split; lower the frequency threshold or widen the train window"
        )
    return Vocabulary(key=key, tokens=tokens)


def load_engaged_item_counts(tft_output, items: Vocabulary) -> np.ndarray:
    """Read the engaged (label 1) train count of every item, in item vocabulary order.

    Args:
      tft_output: A `tft.TFTransformOutput`.
      items: The item vocabulary.

    Returns:
      [V] float64 counts; items without engaged train rows have 0.

    Raises:
      ValueError: No item has an engaged train row.
    """
    path = tft_output.vocabulary_file_by_name(features.ENGAGED_ITEM_COUNTS)
    index = {token: row for row, token in enumerate(items.tokens)}
    counts = np.zeros(items.size, np.float64)

    with tf.io.gfile.GFile(path, "rb") as lines:
        for line in lines:
            # Lines are "count token"; the token may itself contain spaces.
            count, _, token = line.rstrip(b"\n").partition(b" ")
            row = index.get(token)
            if row is not None:
                counts[row] = float(count)

    if counts.sum() <= 0:
        raise ValueError(
            f"{features.ENGAGED_ITEM_COUNTS} at {path} has no engaged item in the item "
            "vocabulary: the train split needs rows with label 1"
        )
    return counts


def list_files(patterns: Sequence[str]) -> list[str]:
    """Expand file patterns into a sorted list of files.

    Raises:
      ValueError: No file matches.
    """
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"No transformed examples match {list(patterns)}: check the split paths")
    return files


def parsing_spec(tft_output, keys: Sequence[str]) -> dict[str, tf.io.FixedLenFeature]:
    """Select the transformed feature spec of `keys`.

    Raises:
      ValueError: The Transform output lacks one of `keys`.
    """
    spec = tft_output.transformed_feature_spec()
    missing = sorted(set(keys) - set(spec))
    if missing:
        raise ValueError(
            f"Transformed examples lack {missing}, which Stage I needs: the preprocessing_fn "
            f"must follow the Transform output contract in transforms.features "
            f"(features present: {sorted(spec)})"
        )
    return {key: spec[key] for key in keys}


def read_rows(files: Sequence[str], spec: dict) -> tf.data.Dataset:
    """Return one dict of scalars per transformed example, in file order.

    Files are read one after another, so the order is the same on every run.

    Args:
      files: TFRecord files, gzipped when their name ends in ".gz".
      spec: Feature spec; dense features must hold one value per example.

    Returns:
      A dataset of {key: scalar tensor}. A sparse (optional) float feature becomes 1.0
      where an example has no value, so a missing `weight` counts as 1.
    """
    compression = "GZIP" if all(path.endswith(".gz") for path in files) else ""
    records = tf.data.TFRecordDataset(list(files), compression_type=compression)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        return {key: _one_value_per_row(value) for key, value in parsed.items()}

    return records.batch(_READ_BATCH_SIZE).map(parse).unbatch()


def _one_value_per_row(value) -> tf.Tensor:
    if isinstance(value, tf.SparseTensor):
        dense = tf.sparse.to_dense(value, default_value=tf.ones([], value.dtype))
        padded = tf.concat([dense, tf.ones_like(dense[:, :1])], axis=1)
        return padded[:, 0]
    return tf.reshape(value, [-1])


def engaged_rows(rows: tf.data.Dataset) -> tf.data.Dataset:
    """Keep the rows with label 1."""
    return rows.filter(lambda row: tf.equal(row[features.LABEL], 1))


def floor_probability(rows: tf.data.Dataset, floor: float) -> tf.data.Dataset:
    """Raise every item sampling probability to at least `floor`.

    An eval item never engaged in train has probability 0, whose log is -inf; the floor
    gives it the probability of an item engaged once.
    """

    def apply(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        row = dict(row)
        probability = tf.cast(row[features.ITEM_SAMPLING_PROBABILITY], tf.float32)
        row[features.ITEM_SAMPLING_PROBABILITY] = tf.maximum(probability, floor)
        return row

    return rows.map(apply)


def to_numpy_columns(rows: tf.data.Dataset, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read whole columns of a row dataset into NumPy arrays."""
    columns: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in rows.batch(65536):
        for key in keys:
            columns[key].append(batch[key].numpy())
    return {
        key: np.concatenate(parts) if parts else np.zeros([0], np.int64)
        for key, parts in columns.items()
    }


def side_feature_index(
    ids: np.ndarray,
    values: np.ndarray,
    timestamps: np.ndarray,
    id_rows: int,
    value_oov_index: int,
) -> np.ndarray:
    """Map each id to the side feature value of its latest train row.

    The towers take ids only, so training and serving agree: a side feature of a user or
    item is looked up from its id, using the value of its latest train row.

    Args:
      ids: [N] id vocabulary indices of the train rows.
      values: [N] side feature vocabulary indices of the same rows.
      timestamps: [N] row timestamps; ties keep the later row in file order.
      id_rows: Rows of the id table (vocabulary plus OOV).
      value_oov_index: OOV index of the side feature, given to ids without a row.

    Returns:
      [id_rows] int64 side feature index per id.
    """
    index = np.full(id_rows, value_oov_index, np.int64)
    order = np.argsort(timestamps, kind="stable")
    ids_by_time = ids[order]
    values_by_time = values[order]

    # np.unique on the reversed order finds each id's last (latest) row.
    _, reversed_positions = np.unique(ids_by_time[::-1], return_index=True)
    latest = len(ids_by_time) - 1 - reversed_positions
    index[ids_by_time[latest]] = values_by_time[latest]
    return index
