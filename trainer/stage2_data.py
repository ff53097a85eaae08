"""Reading the Transform output for Stage II: feature layout, batches, one train-split pass.

The Transform output contract (transforms.features): ids and categorical side features
become `<key>_xf` int64 vocabulary indices, numeric side features `<key>_xf` float32, and
every raw column is passed through under its raw name. Stage II trains on the `_xf`
features and reads the raw columns once, before training, to build the serving model's
side-feature tables and the distillation teacher's calibration data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer import ranker as ranker_lib
from transforms import features

# Derived features of the Transform output: their names start with user_ or item_ but they
# are computed from the ids, not read from the log.
DERIVED_FEATURES = frozenset(
    {
        features.ITEM_POPULARITY_BUCKET,
        features.USER_IS_RETURNING,
        features.ITEM_TRAIN_COUNT,
        features.ITEM_SAMPLING_PROBABILITY,
    }
)

# Batch size of the single pass over the train split that builds the side-feature tables
# and the teacher's calibration data.
SCAN_BATCH_SIZE = 4096


def raw_side_features(raw_feature_spec: Mapping[str, Any]) -> dict[str, tf.dtypes.DType]:
    """Return the raw user_* and item_* side features of the log and their dtypes."""
    return {
        key: spec.dtype
        for key, spec in sorted(raw_feature_spec.items())
        if features.is_side_feature(key) and key not in DERIVED_FEATURES
    }


def describe_ranker_inputs(tft_output: tft.TFTransformOutput) -> ranker_lib.RankerInputs:
    """Read the vocabulary sizes and the side features the ranker gets from a Transform output.

    Categorical side features are the int64 `<key>_xf` outputs (vocabulary indices);
    numeric side features are the float32 ones.
    """
    transformed_spec = tft_output.transformed_feature_spec()
    categorical = {}
    numeric = []
    for key in raw_side_features(tft_output.raw_feature_spec()):
        name = features.transformed_name(key)
        if name not in transformed_spec:
            continue
        if transformed_spec[name].dtype == tf.int64:
            size = tft_output.vocabulary_size_by_name(features.vocabulary_name(key))
            categorical[name] = size + features.NUM_OOV_BUCKETS
        else:
            numeric.append(name)

    return ranker_lib.RankerInputs(
        user_vocabulary_size=vocabulary_size(tft_output, features.USER_ID),
        item_vocabulary_size=vocabulary_size(tft_output, features.ITEM_ID),
        categorical_side_features=categorical,
        numeric_side_features=tuple(numeric),
    )


def vocabulary_size(tft_output: tft.TFTransformOutput, key: str) -> int:
    """Return the number of tokens of raw feature `key`'s vocabulary, OOV excluded."""
    return tft_output.vocabulary_size_by_name(features.vocabulary_name(key))


def vocabulary_tokens(tft_output: tft.TFTransformOutput, key: str) -> list[str]:
    """Return the tokens of raw feature `key`'s vocabulary in index order."""
    tokens = tft_output.vocabulary_by_name(features.vocabulary_name(key))
    return [token.decode("utf-8") if isinstance(token, bytes) else token for token in tokens]


def list_files(file_patterns: Sequence[str] | str) -> list[str]:
    """Expand TFX file patterns (e.g. `<uri>/Split-train/*`) into a sorted list of files.

    Raises:
      FileNotFoundError: no file matches.
    """
    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    files = sorted(path for pattern in file_patterns for path in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no transformed examples match {list(file_patterns)}: check that Transform wrote "
            "this split"
        )
    return files


def record_dataset(file_patterns: Sequence[str] | str) -> tf.data.Dataset:
    """Return the serialized records of TFRecord files, GZIP-compressed when named *.gz."""
    files = list_files(file_patterns)
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def make_dataset(
    file_patterns: Sequence[str] | str,
    tft_output: tft.TFTransformOutput,
    feature_keys: Sequence[str],
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Return batches of (transformed features, label) from transformed examples.

    The optional `weight` column is not read: every row weighs 1 in Stage II.

    Args:
      file_patterns: TFX file patterns of one split.
      tft_output: the Transform output that wrote the examples.
      feature_keys: transformed feature keys to parse.
      batch_size: examples per batch; the last batch may be shorter.
      shuffle_buffer: examples in the shuffle buffer; 0 keeps file order.
      seed: shuffle seed.
      repeat: repeat the data without end (when the step count is fixed).
    """
    spec = tft_output.transformed_feature_spec()
    parse_spec = {key: spec[key] for key in (*feature_keys, features.LABEL)}

    dataset = record_dataset(file_patterns)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size)

    def parse(records: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = tf.io.parse_example(records, parse_spec)
        label = parsed.pop(features.LABEL)
        return parsed, tf.cast(tf.reshape(label, [-1]), tf.float32)

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def first_values(
    values: tf.SparseTensor, batch_size: tf.Tensor, default: Any
) -> tuple[tf.Tensor, tf.Tensor]:
    """Return each row's first value of a [B, n] SparseTensor, and whether the row has one.

    Returns:
      (values [B], present [B] bool); rows without a value get `default`.
    """
    is_first = tf.equal(values.indices[:, 1], 0)
    rows = tf.boolean_mask(values.indices[:, 0], is_first)[:, tf.newaxis]
    firsts = tf.boolean_mask(values.values, is_first)
    filled = tf.fill([batch_size], tf.constant(default, values.dtype))
    dense = tf.tensor_scatter_nd_update(filled, rows, firsts)
    present = tf.scatter_nd(rows, tf.ones_like(firsts, tf.int32), [batch_size]) > 0
    return dense, present


def missing_value(dtype: tf.dtypes.DType) -> Any:
    """Return the value that reads as missing in the Transform graph for `dtype`.

    The empty string maps to the OOV index and NaN to the train median. An integer cannot
    be NaN, so a missing integer reads as 0, as in the Transform graph.
    """
    if dtype == tf.string:
        return ""
    if dtype.is_floating:
        return float("nan")
    return 0


def is_missing(values: np.ndarray) -> np.ndarray:
    """Return True where NumPy raw values are missing: blank strings or NaN."""
    if values.dtype == object:
        return np.array([not value.strip() for value in values], dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        return np.isnan(values)
    return np.zeros(values.shape, dtype=bool)


@dataclasses.dataclass
class TrainSplitScan:
    """Columns of every train-split row needed before training.

    Attributes:
      user_ids, item_ids: raw ids (bytes objects).
      timestamps: int64 seconds.
      user_index, item_index: vocabulary indices.
      labels: int64 0/1.
      side_values: raw side feature -> its values (bytes objects or numbers).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    user_index: np.ndarray
    item_index: np.ndarray
    labels: np.ndarray
    side_values: dict[str, np.ndarray]


def scan_train_split(
    file_patterns: Sequence[str] | str, tft_output: tft.TFTransformOutput
) -> TrainSplitScan:
    """Read the ids, timestamps, labels and raw side features of every train-split row.

    The Transform output passes every raw column through under its raw name, which is what
    makes the raw side features readable here.
    """
    side_keys = list(raw_side_features(tft_output.raw_feature_spec()))
    raw_keys = [features.USER_ID, features.ITEM_ID, features.TIMESTAMP, *side_keys]
    index_keys = [ranker_lib.USER_INDEX, ranker_lib.ITEM_INDEX, features.LABEL]
    spec = tft_output.transformed_feature_spec()
    missing = [key for key in raw_keys + index_keys if key not in spec]
    if missing:
        raise ValueError(
            f"the transformed examples lack {missing}: the Transform output must pass every "
            "raw column through under its raw name and write the id vocabulary indices"
        )

    parse_spec = {key: tf.io.VarLenFeature(spec[key].dtype) for key in raw_keys + index_keys}

    def parse(records: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(records, parse_spec)
        batch = tf.shape(records)[0]
        return {
            key: first_values(value, batch, missing_value(value.dtype))[0]
            for key, value in parsed.items()
        }

    dataset = record_dataset(file_patterns).batch(SCAN_BATCH_SIZE).map(parse)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in raw_keys + index_keys}
    for batch in dataset.as_numpy_iterator():
        for key, value in batch.items():
            columns[key].append(value)
    merged = {key: np.concatenate(parts) for key, parts in columns.items()}

    return TrainSplitScan(
        user_ids=merged[features.USER_ID],
        item_ids=merged[features.ITEM_ID],
        timestamps=merged[features.TIMESTAMP].astype(np.int64),
        user_index=merged[ranker_lib.USER_INDEX].astype(np.int64),
        item_index=merged[ranker_lib.ITEM_INDEX].astype(np.int64),
        labels=merged[features.LABEL].astype(np.int64),
        side_values={key: merged[key] for key in side_keys},
    )


def latest_values(ids: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> dict[Any, Any]:
    """Return each id's value from its latest row where the value is not missing.

    Rows with equal timestamps keep their file order, so the later row wins.
    """
    order = np.argsort(timestamps, kind="stable")
    kept = order[~is_missing(values[order])]
    return dict(zip(ids[kept].tolist(), values[kept].tolist(), strict=True))
