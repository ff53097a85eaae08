"""The Stage II serving model: raw features -> Transform graph -> ranker -> probability.

Two signatures, both returning SCORE_OUTPUT, the engagement probability (tf.float32 [None]):
- SERVING_DEFAULT_SIGNATURE: input SERVING_EXAMPLES_INPUT, serialized tf.Example protos
  (tf.string [None]) with raw features, as TFMA and TF Serving's Predict send. The label,
  timestamp and weight are not needed.
- PREDICT_SIGNATURE: inputs USER_ID and ITEM_ID, raw string ids (tf.string [None]).

Side features absent from a request are looked up by id in user and item feature tables
built from the train split (the latest non-missing value of each id) and saved with the
model. An id absent from the tables gets missing side features, which the Transform graph
imputes. An unseen or empty id maps to the OOV index of its vocabulary and scores without
error.

`predict` takes the ids only. TF Serving accepts a request without an input only when the
SignatureDef has a default for it, a default has one fixed shape that cannot match every
batch size, and the TF 2.21 Python loader ignores defaults. A client with side features of
its own sends them in a tf.Example to SERVING_DEFAULT_SIGNATURE, where each feature present
in the example is used in place of the table's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer import ranker as ranker_lib
from trainer import stage2_data
from transforms import features


class SideFeatureTable(tf.Module):
    """Raw side-feature values of each user or item id, from the train split.

    Args:
      name: "user_features" or "item_features".
      columns: raw side feature -> {id (bytes): value}.
      dtypes: raw side feature -> dtype of its raw values.
    """

    def __init__(
        self,
        name: str,
        columns: Mapping[str, Mapping[bytes, Any]],
        dtypes: Mapping[str, tf.dtypes.DType],
    ) -> None:
        super().__init__(name=name)
        ids = sorted({key for column in columns.values() for key in column})
        self.size = len(ids)
        self.rows = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)
        if ids:
            self.rows.insert(tf.constant(ids, tf.string), tf.range(len(ids), dtype=tf.int64))

        # Each column has one extra last row, read for ids absent from the table.
        self.values = {}
        self.present = {}
        for key in sorted(columns):
            default = stage2_data.missing_value(dtypes[key])
            values = [columns[key].get(id_, default) for id_ in ids] + [default]
            present = [id_ in columns[key] for id_ in ids] + [False]
            self.values[key] = tf.Variable(
                tf.constant(values, dtypes[key]), trainable=False, name=key
            )
            self.present[key] = tf.Variable(present, trainable=False, name=f"{key}_present")

    @property
    def keys(self) -> list[str]:
        """The raw side features in the table."""
        return sorted(self.values)

    def fill(
        self, ids: tf.Tensor, raw: dict[str, tuple[tf.Tensor, tf.Tensor]]
    ) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """Fill the table's features where `raw` lacks them, looked up by `ids`.

        Args:
          ids: string ids [B].
          raw: raw feature -> (values [B], present [B]); values present in it are kept.

        Returns:
          A copy of `raw` with every feature of the table, filled per example.
        """
        rows = self.rows.lookup(ids)
        rows = tf.where(rows < 0, tf.cast(self.size, tf.int64), rows)
        filled = dict(raw)
        for key in self.keys:
            table_values = tf.gather(self.values[key], rows)
            table_present = tf.gather(self.present[key], rows)
            if key not in raw:
                filled[key] = (table_values, table_present)
                continue
            values, present = raw[key]
            filled[key] = (
                tf.where(present, values, table_values),
                tf.logical_or(present, table_present),
            )
        return filled


def build_side_feature_tables(
    scan: stage2_data.TrainSplitScan, dtypes: Mapping[str, tf.dtypes.DType]
) -> tuple[SideFeatureTable, SideFeatureTable]:
    """Return the (user, item) side-feature tables of the train split."""
    user_columns = {}
    item_columns = {}
    for key, values in scan.side_values.items():
        if key.startswith(features.USER_FEATURE_PREFIX):
            user_columns[key] = stage2_data.latest_values(scan.user_ids, scan.timestamps, values)
        else:
            item_columns[key] = stage2_data.latest_values(scan.item_ids, scan.timestamps, values)
    user_table = SideFeatureTable("user_features", user_columns, dtypes)
    item_table = SideFeatureTable("item_features", item_columns, dtypes)
    return user_table, item_table


def to_transform_input(
    spec: Any, values: tf.Tensor, present: tf.Tensor
) -> tf.Tensor | tf.SparseTensor:
    """Convert one raw feature, (values [B], present [B]), to the Transform graph's input type.

    A VarLenFeature becomes a [B, 1] SparseTensor with the present values only. A
    FixedLenFeature becomes a dense tensor of its shape, with missing values replaced by
    its default, or by `stage2_data.missing_value` when it has none.

    Raises:
      TypeError: the raw feature spec has another type (e.g. RaggedFeature).
    """
    if isinstance(spec, tf.io.VarLenFeature):
        rows = tf.where(present)
        indices = tf.concat([rows, tf.zeros_like(rows)], axis=1)
        batch = tf.shape(values, out_type=tf.int64)[0]
        kept = tf.gather_nd(values, rows)
        return tf.SparseTensor(indices, kept, dense_shape=tf.stack([batch, 1]))

    if isinstance(spec, tf.io.FixedLenFeature):
        default = stage2_data.missing_value(spec.dtype)
        if spec.default_value is not None:
            default = np.asarray(spec.default_value).reshape(-1)[0].item()
            if isinstance(default, bytes):
                default = default.decode("utf-8")
        dense = tf.where(present, values, tf.constant(default, spec.dtype))
        return tf.reshape(dense, [-1, *spec.shape])

    raise TypeError(
        f"raw feature spec {spec!r} is not supported by the Stage II serving signatures: "
        "use FixedLenFeature or VarLenFeature for raw columns"
    )


class RankingServingModule(tf.Module):
    """Serving model: raw features -> Transform graph -> DcnRanker -> probability.

    Args:
      ranker: the trained ranker.
      tft_output: the Transform output whose graph is embedded.
      user_table: user side features by user id.
      item_table: item side features by item id.
      feature_keys: transformed features the ranker reads.
    """

    def __init__(
        self,
        ranker: ranker_lib.DcnRanker,
        tft_output: tft.TFTransformOutput,
        user_table: SideFeatureTable,
        item_table: SideFeatureTable,
        feature_keys: Sequence[str],
    ) -> None:
        super().__init__(name="ranking_serving")
        self.ranker = ranker
        self.tft_layer = tft_output.transform_features_layer()
        self.user_table = user_table
        self.item_table = item_table
        raw_spec = tft_output.raw_feature_spec()
        fed_keys = [*features.ID_COLUMNS, *stage2_data.raw_side_features(raw_spec)]
        # Stored as tuples so tf.Module tracking leaves the specs alone.
        self._fed_specs = tuple((key, raw_spec[key]) for key in fed_keys)
        self._feature_keys = tuple(feature_keys)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=features.SERVING_EXAMPLES_INPUT),
        ]
    )
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        """Score serialized tf.Example protos carrying raw features."""
        parse_spec = {key: tf.io.VarLenFeature(spec.dtype) for key, spec in self._fed_specs}
        parsed = tf.io.parse_example(examples, parse_spec)
        batch = tf.shape(examples)[0]
        raw = {
            key: stage2_data.first_values(parsed[key], batch, stage2_data.missing_value(spec.dtype))
            for key, spec in self._fed_specs
        }
        return self._score(raw)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=features.USER_ID),
            tf.TensorSpec([None], tf.string, name=features.ITEM_ID),
        ]
    )
    def predict(self, user_id: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        """Score (user_id, item_id) pairs; side features come from the exported tables."""
        everywhere = tf.ones_like(user_id, dtype=tf.bool)
        raw = {
            features.USER_ID: (user_id, everywhere),
            features.ITEM_ID: (item_id, everywhere),
        }
        return self._score(raw)

    def _score(self, raw: dict[str, tuple[tf.Tensor, tf.Tensor]]) -> dict[str, tf.Tensor]:
        raw = self.user_table.fill(raw[features.USER_ID][0], raw)
        raw = self.item_table.fill(raw[features.ITEM_ID][0], raw)
        transform_inputs = {
            key: to_transform_input(spec, *raw[key]) for key, spec in self._fed_specs
        }

        transformed = self.tft_layer(transform_inputs)
        ranker_inputs = {key: transformed[key] for key in self._feature_keys}
        logits = self.ranker(ranker_inputs, training=False)
        return {features.SCORE_OUTPUT: tf.sigmoid(logits)}


def export_serving_model(module: RankingServingModule, serving_model_dir: str) -> None:
    """Save the serving SavedModel with its two signatures."""
    signatures = {
        features.SERVING_DEFAULT_SIGNATURE: module.serve_examples.get_concrete_function(),
        features.PREDICT_SIGNATURE: module.predict.get_concrete_function(),
    }
    tf.saved_model.save(module, serving_model_dir, signatures=signatures)
