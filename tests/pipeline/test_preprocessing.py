"""preprocessing_fn through TFT Beam (in-process) against hand-worked outputs.

The hand-made train split used by most tests (label 1 = engaged):

  row  user  item           label  item_price  item_genre
  1    a     x              1      1.0         g
  2    b     y              1      2.0         (missing)
  3    c     z              1      3.0         h
  4    ü     x              0      4.0         h
  5    b     crème brûlée   1      1000.0      h
  6    a     crème brûlée   1      NaN         h
  7    d     w              0      inf         h
  8    e     w              0      (missing)   h
"""

import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from transforms import features, preprocessing, readers
from transforms.log_mapping import ColumnMapping

XF = features.transformed_name
NAN = float("nan")

HAND_ROWS = [
    ("a", "x", 1, 1.0, "g"),
    ("b", "y", 1, 2.0, None),
    ("c", "z", 1, 3.0, "h"),
    ("ü", "x", 0, 4.0, "h"),
    ("b", "crème brûlée", 1, 1000.0, "h"),
    ("a", "crème brûlée", 1, NAN, "h"),
    ("d", "w", 0, math.inf, "h"),
    ("e", "w", 0, None, "h"),
]


def _feature_spec(numeric: tuple[str, ...] = (), categorical: tuple[str, ...] = ()) -> dict:
    """The feature spec the curated schema gives: required columns dense [1], the rest sparse."""
    spec = {
        features.USER_ID: tf.io.FixedLenFeature([1], tf.string),
        features.ITEM_ID: tf.io.FixedLenFeature([1], tf.string),
        features.TIMESTAMP: tf.io.FixedLenFeature([1], tf.int64),
        features.LABEL: tf.io.FixedLenFeature([1], tf.int64),
    }
    spec.update({name: tf.io.VarLenFeature(tf.float32) for name in numeric})
    spec.update({name: tf.io.VarLenFeature(tf.string) for name in categorical})
    return spec


def _instance(row: dict) -> dict:
    """Return a TFT instance dict: a one-value list per present column, [] when missing."""
    return {key: [] if value is None else [value] for key, value in row.items()}


def _analyze_and_transform(rows, spec, folder, config=None):
    """Run preprocessing_fn over `rows` as the train split; return (outputs, TFTransformOutput)."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    custom_config = (config or preprocessing.PreprocessingConfig()).to_custom_config()

    def preprocessing_fn(inputs):
        return preprocessing.preprocessing_fn(inputs, custom_config)

    output_dir = str(folder / "transform_output")
    with tft_beam.Context(temp_dir=str(folder / "tmp"), force_tf_compat_v1=False):
        (outputs, _), transform_fn = ([_instance(row) for row in rows], metadata) | (
            tft_beam.AnalyzeAndTransformDataset(preprocessing_fn, output_record_batches=False)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    return outputs, tft.TFTransformOutput(output_dir)


def _serve(tft_output, batch: dict) -> dict:
    """Apply the exported transform graph (as a serving model does) to raw feature tensors."""
    layer = tft_output.transform_features_layer()
    return {key: value.numpy() for key, value in layer(batch).items()}


def _serving_batch(users, items, prices=None) -> dict:
    size = len(users)
    batch = {
        features.USER_ID: tf.constant([[user] for user in users]),
        features.ITEM_ID: tf.constant([[item] for item in items]),
        features.TIMESTAMP: tf.zeros([size, 1], tf.int64),
        features.LABEL: tf.zeros([size, 1], tf.int64),
    }
    if prices is not None:
        batch[features.ITEM_PRICE] = tf.sparse.from_dense(tf.constant([[p] for p in prices]))
        batch[features.ITEM_GENRE] = tf.sparse.from_dense(tf.constant([["h"]] * size))
    return batch


def _tokens(tft_output, key: str) -> list[str]:
    return [token.decode("utf-8") for token in tft_output.vocabulary_by_name(key)]


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    rows = [
        {
            features.USER_ID: user,
            features.ITEM_ID: item,
            features.TIMESTAMP: index,
            features.LABEL: label,
            features.ITEM_PRICE: price,
            features.ITEM_GENRE: genre,
        }
        for index, (user, item, label, price, genre) in enumerate(HAND_ROWS)
    ]
    spec = _feature_spec(numeric=(features.ITEM_PRICE,), categorical=(features.ITEM_GENRE,))
    return _analyze_and_transform(rows, spec, tmp_path_factory.mktemp("hand_made"))


def test_vocabulary_order_is_count_then_reverse_bytes(hand_made):
    _, tft_output = hand_made
    # Users: a and b twice, the rest once. Ties sort by UTF-8 bytes, descending:
    # "b" > "a"; "ü" (0xC3 0xBC) > "e" > "d" > "c".
    assert _tokens(tft_output, features.vocabulary_name(features.USER_ID)) == [
        "b", "a", "ü", "e", "d", "c",
    ]  # fmt: skip
    # Items: x, w and crème brûlée twice ("x" > "w" > "c..."), then z > y once.
    assert _tokens(tft_output, features.vocabulary_name(features.ITEM_ID)) == [
        "x", "w", "crème brûlée", "z", "y",
    ]  # fmt: skip
    # The missing genre never enters the vocabulary.
    assert _tokens(tft_output, features.vocabulary_name(features.ITEM_GENRE)) == ["h", "g"]


def test_train_rows_get_vocabulary_indices(hand_made):
    outputs, _ = hand_made
    assert [row[XF(features.USER_ID)] for row in outputs] == [1, 0, 5, 2, 0, 1, 4, 3]
    assert [row[XF(features.ITEM_ID)] for row in outputs] == [0, 4, 3, 0, 2, 2, 1, 1]
    # Genre: h -> 0, g -> 1, missing -> OOV index 2 (vocabulary of 2 tokens).
    assert [row[XF(features.ITEM_GENRE)] for row in outputs] == [1, 2, 0, 0, 0, 0, 0, 0]


def test_raw_columns_pass_through(hand_made):
    outputs, _ = hand_made
    assert [row[features.ITEM_ID] for row in outputs][4] == "crème brûlée".encode()
    assert [row[features.ITEM_GENRE] for row in outputs][1] == b""
    assert [row[features.TIMESTAMP] for row in outputs] == list(range(8))


def test_engaged_counts_probability_and_bucket(hand_made):
    outputs, tft_output = hand_made
    # Engaged rows: 1 (x), 2 (y), 3 (z), 5 and 6 (crème brûlée): 5 in all; w never.
    assert _tokens(tft_output, features.ENGAGED_ITEM_COUNTS) == [
        "2 crème brûlée", "1 z", "1 y", "1 x",
    ]  # fmt: skip
    by_item = {row[features.ITEM_ID].decode(): row for row in outputs}
    expected = {  # item: (train count, count / 5, bucket)
        "crème brûlée": (2, 0.4, 2),
        "x": (1, 0.2, 1),
        "y": (1, 0.2, 1),
        "w": (0, 0.0, 0),
    }
    for item, (count, probability, bucket) in expected.items():
        assert by_item[item][features.ITEM_TRAIN_COUNT] == count, item
        assert by_item[item][features.ITEM_SAMPLING_PROBABILITY] == pytest.approx(probability)
        assert by_item[item][features.ITEM_POPULARITY_BUCKET] == bucket, item


def test_numeric_feature_imputed_clipped_log_scaled(hand_made):
    outputs, _ = hand_made
    # Finite train prices: 1, 2, 3, 4, 1000 -> median 3, 1st percentile 1, 99th 1000.
    # NaN, inf and missing take the median: log1p(3).
    expected = [math.log1p(v) for v in (1.0, 2.0, 3.0, 4.0, 1000.0, 3.0, 3.0, 3.0)]
    actual = [row[XF(features.ITEM_PRICE)] for row in outputs]
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_serving_graph_maps_unseen_and_missing_to_oov(hand_made):
    _, tft_output = hand_made
    batch = _serving_batch(
        users=["a", " ", "", "zz"],
        items=["crème brûlée", "", "\t", "q"],
        prices=[5.0, -1e12, NAN, math.inf],
    )
    served = _serve(tft_output, batch)
    # 6 user tokens -> OOV index 6; 5 item tokens -> OOV index 5.
    assert served[XF(features.USER_ID)].tolist() == [1, 6, 6, 6]
    assert served[XF(features.ITEM_ID)].tolist() == [2, 5, 5, 5]
    assert served[features.USER_IS_RETURNING].tolist() == [1, 0, 0, 0]
    assert served[features.ITEM_TRAIN_COUNT].tolist() == [2, 0, 0, 0]
    assert served[features.ITEM_POPULARITY_BUCKET].tolist() == [2, 0, 0, 0]
    # 5 is inside [1, 1000]; -1e12 clips to 1; NaN and inf take the median 3.
    np.testing.assert_allclose(
        served[XF(features.ITEM_PRICE)],
        [math.log1p(5.0), math.log1p(1.0), math.log1p(3.0), math.log1p(3.0)],
        rtol=1e-6,
    )


def test_returning_flag_ignores_user_threshold(tmp_path):
    rows = [
        {"user_id": user, "item_id": "i", "timestamp": 0, "label": 1}
        for user in ("a", "a", "b", "c", "c")
    ]
    config = preprocessing.PreprocessingConfig(frequency_thresholds={features.USER_ID: 2})
    _, tft_output = _analyze_and_transform(rows, _feature_spec(), tmp_path, config)

    # Threshold 2 keeps a and c (tie: "c" > "a"); b is cut but still a train user.
    assert _tokens(tft_output, features.vocabulary_name(features.USER_ID)) == ["c", "a"]
    served = _serve(tft_output, _serving_batch(users=["a", "b", "new"], items=["i"] * 3))
    assert served[XF(features.USER_ID)].tolist() == [1, 2, 2]
    assert served[features.USER_IS_RETURNING].tolist() == [1, 1, 0]


def _case_rows(cases_dir: pathlib.Path, name: str, mapping: ColumnMapping | None = None):
    return list(readers.read_log(str(cases_dir / name), readers.CSV, mapping))


def test_all_items_rare_is_an_error(cases_dir, tmp_path):
    rows = _case_rows(cases_dir, "all_items_rare.csv")
    config = preprocessing.PreprocessingConfig(frequency_thresholds={features.ITEM_ID: 2})
    _, tft_output = _analyze_and_transform(rows, _feature_spec(), tmp_path, config)

    with pytest.raises(preprocessing.EmptyVocabularyError) as error:
        preprocessing.check_vocabularies(tft_output, config)
    assert str(error.value) == (
        "the item_id vocabulary is empty after a frequency threshold of 2: no item_id value "
        "occurs 2 or more times in the train split. Lower the threshold for item_id "
        "(e.g. --frequency-threshold item_id=1) or train on a longer window."
    )


def test_odd_id_strings_round_trip(cases_dir, tmp_path):
    rows = _case_rows(cases_dir, "odd_id_strings.csv")
    outputs, tft_output = _analyze_and_transform(rows, _feature_spec(), tmp_path)

    items = _tokens(tft_output, features.vocabulary_name(features.ITEM_ID))
    users = _tokens(tft_output, features.vocabulary_name(features.USER_ID))
    odd = {"crème brûlée", "item, with comma", 'quote"inside', "x" * 1500}
    assert odd <= set(items)
    assert "用户42" in users
    for row, output in zip(rows, outputs, strict=True):
        assert items[output[XF(features.ITEM_ID)]] == row[features.ITEM_ID]
        assert users[output[XF(features.USER_ID)]] == row[features.USER_ID]

    # The serving graph maps the exact strings to the same indices.
    odd_items = sorted(odd)
    served = _serve(tft_output, _serving_batch(users=["用户42"] * 4, items=odd_items))
    assert [items[index] for index in served[XF(features.ITEM_ID)]] == odd_items
    assert served[features.USER_IS_RETURNING].tolist() == [1, 1, 1, 1]


def test_numeric_looking_ids_stay_distinct(cases_dir, tmp_path):
    rows = _case_rows(cases_dir, "numeric_looking_ids.csv")
    _, tft_output = _analyze_and_transform(rows, _feature_spec(), tmp_path)

    served = _serve(tft_output, _serving_batch(users=["2"] * 3, items=["007", "7", "7.0"]))
    indices = served[XF(features.ITEM_ID)].tolist()
    items = _tokens(tft_output, features.vocabulary_name(features.ITEM_ID))
    assert [items[index] for index in indices] == ["007", "7", "7.0"]


def test_nan_inf_case_is_imputed_and_bounded(cases_dir, tmp_path):
    mapping = ColumnMapping(
        side_features=((features.ITEM_PRICE, features.ITEM_PRICE),),
        numeric_features=(features.ITEM_PRICE,),
    )
    rows = _case_rows(cases_dir, "numeric_feature_nan_inf.csv", mapping)
    outputs, _ = _analyze_and_transform(
        rows, _feature_spec(numeric=(features.ITEM_PRICE,)), tmp_path
    )

    scaled = np.array([row[XF(features.ITEM_PRICE)] for row in outputs])
    assert np.isfinite(scaled).all()

    # Reference quantiles: the finite train prices at 0-based rank floor(q * n), which is
    # what TFT's quantiles return for inputs this small (epsilon 0.001).
    prices = [row[features.ITEM_PRICE] for row in rows]
    finite = np.sort([price for price in prices if price is not None])
    n = len(finite)  # 297: NaN, inf and the empty value are missing
    median, low, high = finite[n // 2], finite[math.floor(0.01 * n)], finite[math.floor(0.99 * n)]

    def expected(price):
        value = median if price is None else min(max(price, low), high)
        return math.copysign(math.log1p(abs(value)), value)

    np.testing.assert_allclose(scaled, [expected(price) for price in prices], rtol=1e-5)
    # 1e12 is clipped to the 99th percentile, -3 raised to the 1st.
    assert high < 1e12
    assert low > -3.0
