"""The Transform `preprocessing_fn` and the checks on what it writes.

Analyzers see the train split only (the pipeline sets Transform's
`splits_config.analyze` to the train split), so every vocabulary, count and
quantile below is a train-split statistic, applied unchanged to eval, test and
serving requests.

Rules (the README repeats them for users):

- Vocabulary order. TFT 1.21 writes a vocabulary sorted by frequency
  (descending), ties broken by the token's UTF-8 bytes in descending order
  (reverse lexicographic). A token gets its line number as index. With
  `frequency_threshold` t, only tokens seen at least t times in the train split
  are kept, and `top_k` k keeps the first k lines of that order.
- OOV. Each vocabulary has `features.NUM_OOV_BUCKETS` (1) extra index after its
  V tokens: every id never seen in the train split, cut by the threshold, or
  missing maps to index V.
- Missing ids. An id (or categorical value) that is empty or only ASCII
  whitespace is replaced by the empty string before the lookup. TFT's text
  vocabularies never contain the empty string, nor tokens with a newline or
  carriage return, so such values always take the OOV index, in training and in
  the serving graph alike.
- Numeric side features. Missing, NaN and +/-inf values are replaced by the
  train median of the finite values. Then values are clipped to the train 1st
  and 99th percentiles (approximate quantiles, TFT epsilon `QUANTILE_EPSILON`)
  and scaled by sign(x) * log1p(|x|). The result is float32 and always finite,
  and a feature with no finite train value maps to 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from transforms import features, keras_guard

# Percentiles for clipping numeric side features, out of 100 quantile buckets.
NUMERIC_QUANTILE_BUCKETS = 100
NUMERIC_CLIP_LOW_PERCENTILE = 1
NUMERIC_MEDIAN_PERCENTILE = 50
NUMERIC_CLIP_HIGH_PERCENTILE = 99
QUANTILE_EPSILON = 0.001

# TFT 1.21 writes this single token into a vocabulary that would be empty
# (tensorflow_transform.analyzers.get_empy_vocabulary_dummy_value).
EMPTY_VOCABULARY_PLACEHOLDER = b"49d0cd50-04bb-48c0-bc6f-5b575dce351a"


class EmptyVocabularyError(ValueError):
    """A vocabulary has no token after the frequency threshold and top_k."""


@dataclasses.dataclass(frozen=True)
class PreprocessingConfig:
    """Vocabulary settings passed to `preprocessing_fn` as Transform's custom_config.

    Attributes:
      frequency_threshold: minimum train-split count for a token to enter a
        vocabulary, for every feature not in `frequency_thresholds`.
      top_k: maximum vocabulary size for every feature not in `top_ks`; None keeps all.
      frequency_thresholds: per-feature thresholds, by raw feature name.
      top_ks: per-feature vocabulary size limits, by raw feature name.
    """

    frequency_threshold: int = features.DEFAULT_FREQUENCY_THRESHOLD
    top_k: int | None = None
    frequency_thresholds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    top_ks: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, threshold in [
            ("default", self.frequency_threshold),
            *self.frequency_thresholds.items(),
        ]:
            if not isinstance(threshold, int) or threshold < 1:
                raise ValueError(
                    f"frequency threshold for {key} must be an integer >= 1, got {threshold!r}."
                )
        for key, top_k in [("default", self.top_k), *self.top_ks.items()]:
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k for {key} must be an integer >= 1 or None, got {top_k!r}.")

    def frequency_threshold_for(self, key: str) -> int:
        """Return the frequency threshold that applies to raw feature `key`."""
        return self.frequency_thresholds.get(key, self.frequency_threshold)

    def top_k_for(self, key: str) -> int | None:
        """Return the top_k that applies to raw feature `key` (None keeps every token)."""
        return self.top_ks.get(key, self.top_k)

    def to_custom_config(self) -> dict[str, Any]:
        """Return the JSON-compatible dict that Transform passes to `preprocessing_fn`."""
        return {
            "frequency_threshold": self.frequency_threshold,
            "top_k": self.top_k,
            "frequency_thresholds": dict(self.frequency_thresholds),
            "top_ks": dict(self.top_ks),
        }

    @classmethod
    def from_custom_config(cls, custom_config: Mapping[str, Any] | None) -> PreprocessingConfig:
        """Build the config from Transform's custom_config; None gives the defaults."""
        if not custom_config:
            return cls()
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - known)
        if unknown:
            raise ValueError(
                f"unknown preprocessing settings {unknown}: expected some of {sorted(known)}."
            )
        return cls(**custom_config)


def vocabulary_keys(raw_feature_types: Mapping[str, tf.dtypes.DType]) -> list[str]:
    """Return the raw features that get a vocabulary: the ids and categorical side features.

    Args:
      raw_feature_types: raw feature name -> dtype, e.g. from a raw feature spec.

    Returns:
      The id columns first, then string side features in sorted order.
    """
    side = sorted(
        key
        for key, dtype in raw_feature_types.items()
        if features.is_side_feature(key) and tf.dtypes.as_dtype(dtype) == tf.string
    )
    return [*features.ID_COLUMNS, *side]


def preprocessing_fn(
    inputs: dict[str, Any], custom_config: Mapping[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """Map raw canonical features to the transformed features of `transforms.features`.

    Every output is a rank-1 tensor with one value per example.

    Args:
      inputs: raw features by name: dense tensors of shape (B, 1) for required
        columns, SparseTensors for optional columns (weight, side features).
      custom_config: `PreprocessingConfig.to_custom_config()` output, or None.

    Returns:
      The raw columns passed through, with optional ones densified (a missing string
      becomes "", a missing number NaN, a missing weight 1.0). Ids and categorical
      side features get `<key>_xf` vocabulary indices, numeric side features get
      `<key>_xf` scaled values. The derived item count, sampling probability,
      popularity bucket and returning-user flag complete the outputs.
    """
    keras_guard.ensure_legacy_keras()
    config = PreprocessingConfig.from_custom_config(custom_config)
    raw = {key: _densify(key, value) for key, value in inputs.items()}
    outputs = dict(raw)

    vocabulary_files = {}
    for key in vocabulary_keys({key: value.dtype for key, value in raw.items()}):
        values = _missing_to_empty(raw[key])
        vocabulary_files[key] = tft.vocabulary(
            values,
            top_k=config.top_k_for(key),
            frequency_threshold=_threshold_argument(config.frequency_threshold_for(key)),
            vocab_filename=features.vocabulary_name(key),
            name=f"vocabulary_{key}",
        )
        outputs[features.transformed_name(key)] = tft.apply_vocabulary(
            values, vocabulary_files[key], num_oov_buckets=features.NUM_OOV_BUCKETS
        )

    for key in sorted(raw):
        if features.is_side_feature(key) and raw[key].dtype != tf.string:
            outputs[features.transformed_name(key)] = scale_numeric(raw[key])

    item_ids = _missing_to_empty(raw[features.ITEM_ID])
    outputs.update(_item_popularity(item_ids, raw[features.LABEL]))
    user_ids = _missing_to_empty(raw[features.USER_ID])
    outputs[features.USER_IS_RETURNING] = _user_is_returning(
        user_ids, vocabulary_files[features.USER_ID], config
    )
    return outputs


def _threshold_argument(threshold: int) -> int | None:
    # TFT warns that a threshold of 1 is a no-op and expects None instead.
    return None if threshold <= 1 else threshold


def _densify(key: str, value: Any) -> tf.Tensor:
    """Return one value per example as a rank-1 tensor; missing values take a default."""
    if isinstance(value, tf.RaggedTensor):
        value = value.to_sparse()
    if isinstance(value, tf.SparseTensor):
        default = _missing_default(key, value.dtype)
        dense = tf.sparse.to_dense(value, default_value=default)
        # A batch where no example has the feature gives width 0: pad one column.
        padding = tf.fill([tf.shape(dense)[0], 1], tf.constant(default, value.dtype))
        return tf.concat([dense, padding], axis=1)[:, 0]
    if value.shape.rank == 2:
        return value[:, 0]
    return value


def _missing_default(key: str, dtype: tf.dtypes.DType) -> Any:
    if dtype == tf.string:
        return ""
    if key == features.WEIGHT:
        return 1.0
    if dtype.is_floating:
        return float("nan")
    # NOTE: a missing integer side feature cannot be NaN, so it reads as 0.
    return 0


def _missing_to_empty(ids: tf.Tensor) -> tf.Tensor:
    """Replace empty or ASCII-whitespace-only strings by "" (never in a text vocabulary, so OOV)."""
    return tf.where(tf.strings.strip(ids) == "", tf.constant(""), ids)


def scale_numeric(values: tf.Tensor) -> tf.Tensor:
    """Impute, clip and log-scale a numeric feature by the rule in the module docstring.

    Args:
      values: rank-1 numeric tensor; NaN marks a missing value.

    Returns:
      A finite float32 tensor of the same shape.
    """
    values = tf.cast(values, tf.float32)
    finite = tf.math.is_finite(values)

    # Analyzers see only the finite values, so NaN and inf never move a quantile.
    boundaries = tft.quantiles(
        tf.boolean_mask(values, finite),
        num_buckets=NUMERIC_QUANTILE_BUCKETS,
        epsilon=QUANTILE_EPSILON,
    )
    boundaries = tf.reshape(boundaries, [-1])
    low = boundaries[NUMERIC_CLIP_LOW_PERCENTILE - 1]
    median = boundaries[NUMERIC_MEDIAN_PERCENTILE - 1]
    high = boundaries[NUMERIC_CLIP_HIGH_PERCENTILE - 1]

    imputed = tf.where(finite, values, median)
    clipped = tf.clip_by_value(imputed, low, high)
    return tf.sign(clipped) * tf.math.log1p(tf.abs(clipped))


def _item_popularity(item_ids: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
    """Return the item's engaged train count, sampling probability and popularity bucket."""
    engaged = tf.equal(tf.cast(labels, tf.int64), 1)
    engaged_ids = tf.boolean_mask(item_ids, engaged)

    # Counting only the engaged rows' item ids gives integer counts ("count token"
    # lines), ordered like every other vocabulary. A plain vocabulary of the same
    # ids has the same order, so an id's line number there is its line in the
    # counts file, whose first column is read by line number. This avoids parsing
    # tokens (which may contain spaces) and keeps the graph savable: a
    # DatasetInitializer table cannot be captured by tf.saved_model.save.
    counts_file = tft.vocabulary(
        engaged_ids,
        store_frequency=True,
        vocab_filename=features.ENGAGED_ITEM_COUNTS,
        name="engaged_item_counts",
    )
    order_file = tft.vocabulary(
        engaged_ids, vocab_filename=features.ENGAGED_ITEM_ORDER, name="engaged_item_order"
    )
    line = tft.apply_vocabulary(item_ids, order_file, default_value=-1)
    train_count = tft.apply_vocabulary(line, counts_file, lookup_fn=_count_by_line)
    engaged_rows = tft.sum(tf.cast(engaged, tf.int64), name="engaged_rows")

    probability = tf.cast(train_count, tf.float32) / tf.cast(
        tf.maximum(engaged_rows, 1), tf.float32
    )
    boundaries = tf.constant(features.POPULARITY_BUCKET_BOUNDARIES, tf.int64)
    bucket = tf.reduce_sum(
        tf.cast(tf.expand_dims(train_count, -1) >= boundaries, tf.int64), axis=-1
    )
    return {
        features.ITEM_TRAIN_COUNT: train_count,
        features.ITEM_SAMPLING_PROBABILITY: probability,
        features.ITEM_POPULARITY_BUCKET: bucket,
    }


def _count_by_line(lines: tf.Tensor, counts_path: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Look up the count on line `lines` of a "count token" file; line -1 gets 0."""
    initializer = tf.lookup.TextFileInitializer(
        counts_path,
        tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.int64,
        0,
        delimiter=" ",
    )
    table = tf.lookup.StaticHashTable(initializer, default_value=tf.constant(0, tf.int64))
    return table.lookup(lines), table.size()


def _user_is_returning(
    user_ids: tf.Tensor, user_vocabulary: tf.Tensor, config: PreprocessingConfig
) -> tf.Tensor:
    """Return 1 for users with any row in the train split, else 0."""
    threshold = config.frequency_threshold_for(features.USER_ID)
    if threshold <= 1 and config.top_k_for(features.USER_ID) is None:
        # The user vocabulary already contains every train user.
        train_users = user_vocabulary
    else:
        train_users = tft.vocabulary(
            user_ids, vocab_filename=features.TRAIN_USERS_VOCABULARY, name="train_users"
        )
    index = tft.apply_vocabulary(user_ids, train_users, default_value=-1)
    return tf.cast(index >= 0, tf.int64)


def check_vocabularies(
    tft_output: tft.TFTransformOutput, config: PreprocessingConfig
) -> dict[str, int]:
    """Raise on an empty vocabulary and return every vocabulary's size.

    TFT writes a placeholder token in place of an empty vocabulary, so an empty
    vocabulary would otherwise train silently on one meaningless token.

    Args:
      tft_output: the Transform output (transform graph) to check.
      config: the settings the vocabularies were built with, named in errors.

    Returns:
      raw feature name -> vocabulary size without the OOV index, for every id and
      categorical side feature; ENGAGED_ITEM_COUNTS -> number of engaged items.

    Raises:
      EmptyVocabularyError: a vocabulary holds only TFT's placeholder, with the
        feature, its threshold and the fix.
    """
    sizes = {}
    for key in transformed_vocabulary_keys(tft_output):
        tokens = tft_output.vocabulary_by_name(features.vocabulary_name(key))
        if tokens == [EMPTY_VOCABULARY_PLACEHOLDER]:
            raise EmptyVocabularyError(_empty_vocabulary_message(key, config))
        sizes[key] = len(tokens)

    engaged = tft_output.vocabulary_by_name(features.ENGAGED_ITEM_COUNTS)
    if len(engaged) == 1 and engaged[0].endswith(b" " + EMPTY_VOCABULARY_PLACEHOLDER):
        raise EmptyVocabularyError(
            f"no row of the train split has {features.LABEL} = 1, so no item has an engaged "
            "count and Stage I has no positive pair to train on: check the label rule "
            "(e.g. label_rule=threshold:T for ratings) or move the train cut-off later."
        )
    sizes[features.ENGAGED_ITEM_COUNTS] = len(engaged)
    return sizes


def _empty_vocabulary_message(key: str, config: PreprocessingConfig) -> str:
    threshold = config.frequency_threshold_for(key)
    top_k = config.top_k_for(key)
    limit = f" and top_k {top_k}" if top_k is not None else ""
    return (
        f"the {key} vocabulary is empty after a frequency threshold of {threshold}{limit}: "
        f"no {key} value occurs {threshold} or more times in the train split. Lower the "
        f"threshold for {key} (e.g. --frequency-threshold {key}=1) or train on a longer window."
    )


def transformed_vocabulary_keys(tft_output: tft.TFTransformOutput) -> list[str]:
    """Return the raw features that have a vocabulary in a Transform output, ids first."""
    suffix = features.TRANSFORMED_SUFFIX
    keys = [
        name[: -len(suffix)]
        for name in tft_output.transformed_feature_spec()
        if name.endswith(suffix)
    ]
    with_vocabulary = [
        key for key in keys if tft_output.vocabulary_file_by_name(features.vocabulary_name(key))
    ]
    side = sorted(key for key in with_vocabulary if key not in features.ID_COLUMNS)
    return [*features.ID_COLUMNS, *side]


def vocabulary_sizes(tft_output: tft.TFTransformOutput, keys: Iterable[str]) -> dict[str, int]:
    """Return the number of tokens (OOV index excluded) of each raw feature's vocabulary."""
    return {key: tft_output.vocabulary_size_by_name(features.vocabulary_name(key)) for key in keys}
