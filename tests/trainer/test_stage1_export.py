"""Stage I outputs: embedding export, serving SavedModel round trip, history and TensorBoard."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from stage1_testdata import (
    FAST_CONFIG,
    ITEM_GENRE,
    UNSEEN_USER,
    USER_SEGMENT,
    checkpoint_table,
    make_fn_args,
    transformed_log,
)

from trainer import embedding_export, stage1
from trainer.config import Stage1Config
from transforms import features


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One default-config Stage I run on the synthetic log."""
    log = transformed_log()
    root = str(tmp_path_factory.mktemp("stage1-export"))
    fn_args = make_fn_args(
        log.train_pattern, log.eval_pattern, log.transform_output, root, 1, FAST_CONFIG
    )
    result = stage1.train_and_export(fn_args)
    return fn_args, result, tft.TFTransformOutput(log.transform_output)


@pytest.fixture(scope="module")
def trained_with_side_features(tmp_path_factory):
    """A run whose towers add side features, with sampled negatives."""
    log = transformed_log()
    root = str(tmp_path_factory.mktemp("stage1-side"))
    config = dict(
        FAST_CONFIG,
        epochs=1,
        query_id_features=[USER_SEGMENT],
        candidate_id_features=[ITEM_GENRE],
        num_sampled_negatives=4,
    )
    fn_args = make_fn_args(
        log.train_pattern, log.eval_pattern, log.transform_output, root, 1, config
    )
    result = stage1.train_and_export(fn_args)
    return fn_args, result, tft.TFTransformOutput(log.transform_output)


def _normalize(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def _vocabulary(tft_output, key: str) -> list[str]:
    return [
        token.decode() for token in tft_output.vocabulary_by_name(features.vocabulary_name(key))
    ]


def test_export_tokens_follow_transform_vocabulary(trained):
    fn_args, _, tft_output = trained
    root = embedding_export.export_root(fn_args.serving_model_dir)
    assert embedding_export.list_tables(root) == [features.ITEM_ID, features.USER_ID]

    for key in (features.USER_ID, features.ITEM_ID):
        tokens, matrix = embedding_export.read_table(root, key)
        assert tokens == _vocabulary(tft_output, key)
        assert matrix.dtype == np.float32
        assert matrix.shape == (len(tokens) + features.NUM_OOV_BUCKETS, 8)


def test_export_rows_equal_trained_rows_by_token(trained):
    fn_args, result, tft_output = trained
    root = embedding_export.export_root(fn_args.serving_model_dir)
    log = transformed_log()

    for key in (features.USER_ID, features.ITEM_ID):
        tokens, matrix = embedding_export.read_table(root, key)
        table = result.model.tables.table_values(key).numpy()
        saved = checkpoint_table(result.checkpoint_dir, key, matrix.shape)
        vocabulary = _vocabulary(tft_output, key)

        # Look every train token up independently: its Transform index selects the table row.
        for token in sorted({row[key] for row in log.train_rows}):
            export_row = matrix[tokens.index(token)]
            np.testing.assert_array_equal(export_row, table[vocabulary.index(token)])
            np.testing.assert_array_equal(export_row, saved[vocabulary.index(token)])
        np.testing.assert_array_equal(matrix[-1], table[-1])  # the OOV row


def _signature_outputs(signatures, user_ids) -> dict[str, np.ndarray]:
    request = tf.constant(user_ids, tf.string)
    outputs = {}
    for name in (features.QUERY_EMBEDDING_SIGNATURE, features.RETRIEVE_SIGNATURE):
        for key, value in signatures[name](**{features.USER_ID: request}).items():
            outputs[f"{name}/{key}"] = value.numpy()
    return outputs


REQUEST = ["u00", "u07", UNSEEN_USER, "", "u31", "another-unseen-user"]


def test_reloaded_signatures_give_identical_outputs(trained):
    fn_args, result, _ = trained
    before = _signature_outputs(result.serving_module.signatures(), REQUEST)
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    after = _signature_outputs(loaded.signatures, REQUEST)

    assert sorted(after) == sorted(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_signature_contract(trained):
    fn_args, _, _ = trained
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    assert set(loaded.signatures) == {
        features.QUERY_EMBEDDING_SIGNATURE,
        features.RETRIEVE_SIGNATURE,
    }
    for name in loaded.signatures:
        _, inputs = loaded.signatures[name].structured_input_signature
        assert inputs == {features.USER_ID: tf.TensorSpec([None], tf.string, features.USER_ID)}

    empty = _signature_outputs(loaded.signatures, [])
    assert empty["query_embedding/query_embedding"].shape == (0, 8)
    assert empty["retrieve/item_ids"].shape == (0, FAST_CONFIG["retrieve_top_k"])
    batch_of_one = _signature_outputs(loaded.signatures, ["u01"])
    assert batch_of_one["retrieve/item_ids"].shape == (1, FAST_CONFIG["retrieve_top_k"])
    assert batch_of_one["retrieve/scores"].dtype == np.float32


def test_retrieve_matches_numpy_brute_force(trained):
    fn_args, _, _ = trained
    root = embedding_export.export_root(fn_args.serving_model_dir)
    user_tokens, user_matrix = embedding_export.read_table(root, features.USER_ID)
    item_tokens, item_matrix = embedding_export.read_table(root, features.ITEM_ID)
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    outputs = _signature_outputs(loaded.signatures, REQUEST)

    # Cosine similarity: both towers L2-normalised; the OOV item row is not a candidate.
    queries = _normalize(user_matrix)
    candidates = _normalize(item_matrix[: len(item_tokens)])
    k = FAST_CONFIG["retrieve_top_k"]
    for position, user in enumerate(REQUEST):
        row = user_tokens.index(user) if user in user_tokens else len(user_tokens)
        scores = candidates @ queries[row]
        best = np.argsort(-scores, kind="stable")[:k]
        np.testing.assert_allclose(
            outputs["query_embedding/query_embedding"][position], queries[row], atol=1e-6
        )
        assert [t.decode() for t in outputs["retrieve/item_ids"][position]] == [
            item_tokens[index] for index in best
        ]
        np.testing.assert_allclose(outputs["retrieve/scores"][position], scores[best], atol=1e-5)


def test_unseen_users_get_the_oov_row(trained):
    fn_args, _, _ = trained
    root = embedding_export.export_root(fn_args.serving_model_dir)
    _, user_matrix = embedding_export.read_table(root, features.USER_ID)
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    unseen = [UNSEEN_USER, "", "another-unseen-user", " "]
    outputs = _signature_outputs(loaded.signatures, unseen)

    oov_query = _normalize(user_matrix[-1])
    for position in range(len(unseen)):
        np.testing.assert_allclose(
            outputs["query_embedding/query_embedding"][position], oov_query, atol=1e-6
        )
        np.testing.assert_array_equal(
            outputs["retrieve/item_ids"][position], outputs["retrieve/item_ids"][0]
        )


def test_history_and_config_saved_beside_model(trained):
    fn_args, result, _ = trained
    with open(os.path.join(fn_args.serving_model_dir, features.STAGE1_HISTORY_FILE)) as source:
        history = json.load(source)
    with open(os.path.join(fn_args.serving_model_dir, features.STAGE1_CONFIG_FILE)) as source:
        saved_config = Stage1Config.from_dict(json.load(source))

    assert saved_config == Stage1Config.from_dict(FAST_CONFIG)
    assert [record["epoch"] for record in history["epochs"]] == [1, 2]
    assert history["final"] == history["epochs"][-1] == result.history[-1]
    assert history["table_kind"] == "default"
    assert history["final"]["eval_positives"] == sum(
        row[features.LABEL] for row in transformed_log().eval_rows
    )
    assert history["final"]["eval_oov_positives"] == 1  # the eval row with an unseen item
    assert stage1.read_history(fn_args.serving_model_dir) == history


def test_training_rows_are_engaged_and_weighted(trained):
    fn_args, _, _ = trained
    config = Stage1Config.from_dict(FAST_CONFIG)
    data = stage1.prepare_data(config, stage1.inputs_from_fn_args(fn_args))
    train_rows = transformed_log().train_rows
    engaged = [row for row in train_rows if row[features.LABEL] == 1]

    # The log has label-0 rows, and Stage I reads none of them.
    assert len(engaged) < len(train_rows)
    assert data.num_train_rows == len(engaged)
    weights = [float(row[features.WEIGHT]) for row in data.train_rows.as_numpy_iterator()]
    assert sorted(weights) == sorted(row[features.WEIGHT] for row in engaged)


def test_fewer_epochs_than_checkpoint_rejected(trained):
    fn_args, result, _ = trained
    pipeline_root = os.path.dirname(os.path.dirname(os.path.dirname(fn_args.model_run_dir)))
    rerun = make_fn_args(
        fn_args.train_files[0],
        fn_args.eval_files[0],
        fn_args.transform_output,
        pipeline_root,
        2,
        dict(FAST_CONFIG, epochs=1),
    )

    expected = (
        f"Stage I config epochs=1, but the checkpoint in {result.checkpoint_dir} has already "
        "trained 2 epochs with the same inputs and settings: set epochs to 2 or more to reuse "
        "it, or delete that folder (or set checkpoint_dir to another one) to train from scratch"
    )
    with pytest.raises(ValueError) as raised:
        stage1.train_and_export(rerun)
    assert str(raised.value) == expected
    assert not os.path.exists(rerun.serving_model_dir)


def test_metrics_written_to_tensorboard(trained):
    fn_args, result, _ = trained
    values: dict[str, dict[int, float]] = {}
    event_files = tf.io.gfile.glob(os.path.join(fn_args.model_run_dir, "events.out.tfevents.*"))
    assert event_files
    for path in event_files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                values.setdefault(value.tag, {})[event.step] = number

    for record in result.history:
        assert values["loss"][record["epoch"]] == pytest.approx(record["loss"])
        assert values["recall_at_5"][record["epoch"]] == pytest.approx(record["recall@5"])
        assert values["recall_at_10/popularity_bucket_3"][record["epoch"]] == pytest.approx(
            record["recall@10/popularity_bucket_3"]
        )


def test_side_feature_towers_in_export_and_serving(trained_with_side_features):
    fn_args, _, tft_output = trained_with_side_features
    root = embedding_export.export_root(fn_args.serving_model_dir)
    assert embedding_export.list_tables(root) == sorted(
        [features.ITEM_ID, features.USER_ID, ITEM_GENRE, USER_SEGMENT]
    )
    user_tokens, user_matrix = embedding_export.read_table(root, features.USER_ID)
    item_tokens, item_matrix = embedding_export.read_table(root, features.ITEM_ID)
    segment_tokens, segment_matrix = embedding_export.read_table(root, USER_SEGMENT)
    genre_tokens, genre_matrix = embedding_export.read_table(root, ITEM_GENRE)
    assert segment_tokens == _vocabulary(tft_output, USER_SEGMENT)

    # The synthetic log gives user u<k> segment-<k % 3> and item i<k> genre-<k % 4>.
    query = _normalize(
        user_matrix[user_tokens.index("u07")] + segment_matrix[segment_tokens.index("segment-1")]
    )
    genre_rows = [genre_tokens.index(f"genre-{int(token[1:]) % 4}") for token in item_tokens]
    candidates = _normalize(item_matrix[: len(item_tokens)] + genre_matrix[genre_rows])

    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    outputs = _signature_outputs(loaded.signatures, ["u07"])
    np.testing.assert_allclose(outputs["query_embedding/query_embedding"][0], query, atol=1e-6)
    scores = candidates @ query
    best = np.argsort(-scores, kind="stable")[: FAST_CONFIG["retrieve_top_k"]]
    np.testing.assert_allclose(outputs["retrieve/scores"][0], scores[best], atol=1e-5)
