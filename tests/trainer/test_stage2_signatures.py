"""Signature contract of the Stage II serving model, trained briefly on MovieLens 100K."""

import json
import os

import numpy as np
import pytest
import stage2_testdata
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import stage2
from trainer.stage2_config import Stage2Config
from transforms import features

pytestmark = pytest.mark.e2e

CUSTOM_CONFIG = {
    "stage2": {
        "variant": "finetune",
        "batch_size": 256,
        "steps_per_epoch": 20,
        "eval_steps": 2,
        "deep_layer_sizes": [32, 16],
        "side_feature_dim": 4,
        "use_popularity_bucket": True,
        "distillation_weight": 0.5,
        "shuffle_buffer": 2048,
    }
}
_EXPORTS = {}


@pytest.fixture
def exported(movielens_dir):
    """Run the Stage II run_fn once per session; return (data, model dir, loaded model)."""
    data = stage2_testdata.transformed_movielens(movielens_dir)
    if data.root not in _EXPORTS:
        base_model, expected_counts = stage2_testdata.stage1_base_model(data)
        output = os.path.join(data.root, "stage2_model")
        fn_args = FnArgs(
            train_files=[data.train_pattern],
            eval_files=[data.eval_pattern],
            transform_output=data.transform_output,
            serving_model_dir=os.path.join(output, "Format-Serving"),
            model_run_dir=os.path.join(output, "run"),
            base_model=base_model,
            custom_config=CUSTOM_CONFIG,
        )
        stage2.run_fn(fn_args)
        loaded = tf.saved_model.load(fn_args.serving_model_dir)
        _EXPORTS[data.root] = (data, fn_args, loaded, expected_counts)
    return _EXPORTS[data.root]


def predict(loaded, user_ids, item_ids):
    signature = loaded.signatures[features.PREDICT_SIGNATURE]
    outputs = signature(
        **{
            features.USER_ID: tf.constant(user_ids, tf.string),
            features.ITEM_ID: tf.constant(item_ids, tf.string),
        }
    )
    return outputs[features.SCORE_OUTPUT].numpy()


def serve_examples(loaded, rows, spec):
    signature = loaded.signatures[features.SERVING_DEFAULT_SIGNATURE]
    records = [stage2_testdata.to_example(row, spec).SerializeToString() for row in rows]
    outputs = signature(**{features.SERVING_EXAMPLES_INPUT: tf.constant(records, tf.string)})
    return outputs[features.SCORE_OUTPUT].numpy()


def rows_known_in_train(data, count):
    """Eval rows whose user and item both have rows in the train split."""
    users = {row[features.USER_ID] for row in data.train_rows}
    items = {row[features.ITEM_ID] for row in data.train_rows}
    known = [
        row
        for row in data.eval_rows
        if row[features.USER_ID] in users and row[features.ITEM_ID] in items
    ]
    return known[:count]


def test_signature_names(exported):
    _, _, loaded, _ = exported

    assert set(loaded.signatures) == {
        features.SERVING_DEFAULT_SIGNATURE,
        features.PREDICT_SIGNATURE,
    }


def test_serving_default_inputs_and_outputs(exported):
    _, _, loaded, _ = exported
    signature = loaded.signatures[features.SERVING_DEFAULT_SIGNATURE]

    _, inputs = signature.structured_input_signature
    assert list(inputs) == [features.SERVING_EXAMPLES_INPUT]
    assert inputs[features.SERVING_EXAMPLES_INPUT].dtype == tf.string
    assert inputs[features.SERVING_EXAMPLES_INPUT].shape.as_list() == [None]
    assert list(signature.structured_outputs) == [features.SCORE_OUTPUT]
    assert signature.structured_outputs[features.SCORE_OUTPUT].dtype == tf.float32
    assert signature.structured_outputs[features.SCORE_OUTPUT].shape.as_list() == [None]


def test_predict_inputs_and_outputs(exported):
    _, _, loaded, _ = exported
    signature = loaded.signatures[features.PREDICT_SIGNATURE]

    _, inputs = signature.structured_input_signature
    assert sorted(inputs) == sorted([features.USER_ID, features.ITEM_ID])
    for key in (features.USER_ID, features.ITEM_ID):
        assert inputs[key].dtype == tf.string
        assert inputs[key].shape.as_list() == [None]
    assert list(signature.structured_outputs) == [features.SCORE_OUTPUT]
    assert signature.structured_outputs[features.SCORE_OUTPUT].dtype == tf.float32
    assert signature.structured_outputs[features.SCORE_OUTPUT].shape.as_list() == [None]


def test_predict_equals_serving_default(exported):
    data, _, loaded, _ = exported
    rows = rows_known_in_train(data, 50)
    assert len(rows) == 50

    from_examples = serve_examples(loaded, rows, data.raw_spec)
    from_ids = predict(
        loaded, [row[features.USER_ID] for row in rows], [row[features.ITEM_ID] for row in rows]
    )

    # MovieLens side features are constant per id, so the exported tables hold the same
    # values as the examples, which also carry the label and timestamp the model ignores.
    np.testing.assert_allclose(from_ids, from_examples, rtol=1e-6, atol=1e-7)
    assert np.all((from_ids > 0.0) & (from_ids < 1.0))
    assert np.unique(from_ids).size > 10


def test_examples_without_side_features_use_the_tables(exported):
    data, _, loaded, _ = exported
    rows = rows_known_in_train(data, 20)
    ids_only = [
        {features.USER_ID: row[features.USER_ID], features.ITEM_ID: row[features.ITEM_ID]}
        for row in rows
    ]

    np.testing.assert_allclose(
        serve_examples(loaded, ids_only, data.raw_spec),
        serve_examples(loaded, rows, data.raw_spec),
        rtol=1e-6,
        atol=1e-7,
    )


def test_batch_of_one_and_short_last_batch(exported):
    data, _, loaded, _ = exported
    rows = data.eval_rows[:300]

    whole = serve_examples(loaded, rows, data.raw_spec)
    # Batches of 128, 128 and a short last batch of 44.
    chunked = np.concatenate(
        [
            serve_examples(loaded, rows[start : start + 128], data.raw_spec)
            for start in (0, 128, 256)
        ]
    )
    single = serve_examples(loaded, rows[299:300], data.raw_spec)

    assert whole.shape == (300,)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    assert single.shape == (1,)
    assert single[0] == pytest.approx(whole[299], rel=1e-6)


def test_predict_batch_of_one(exported):
    data, _, loaded, _ = exported
    row = rows_known_in_train(data, 1)[0]

    score = predict(loaded, [row[features.USER_ID]], [row[features.ITEM_ID]])

    assert score.shape == (1,)
    assert score[0] == pytest.approx(serve_examples(loaded, [row], data.raw_spec)[0], rel=1e-6)


def test_empty_batch_gives_empty_scores(exported):
    _, _, loaded, _ = exported

    assert predict(loaded, [], []).shape == (0,)


def test_unseen_ids_take_the_oov_path(exported):
    data, _, loaded, _ = exported
    item = rows_known_in_train(data, 1)[0][features.ITEM_ID]
    unseen_users = ["never-seen", "7.0e9", "日本語", "a,b", 'say "hi"', "", "   "]

    scores = predict(loaded, unseen_users, [item] * len(unseen_users))

    # Unseen, empty and blank ids all map to the OOV index, and have no side features.
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, np.full(len(scores), scores[0]), rtol=1e-6)
    unseen_item = predict(loaded, ["never-seen", "never-seen"], ["no-such-item", ""])
    assert unseen_item[0] == pytest.approx(unseen_item[1], rel=1e-6)
    example = {features.USER_ID: "never-seen", features.ITEM_ID: item}
    assert serve_examples(loaded, [example], data.raw_spec)[0] == pytest.approx(scores[0])


def test_config_and_counts_saved_beside_the_model(exported):
    _, fn_args, _, expected_counts = exported
    model_dir = fn_args.serving_model_dir

    with open(os.path.join(model_dir, features.STAGE2_CONFIG_FILE), encoding="utf-8") as f:
        saved_config = Stage2Config.from_dict(json.load(f))
    with open(os.path.join(model_dir, features.WARM_START_COUNTS_FILE), encoding="utf-8") as f:
        saved_counts = json.load(f)

    assert saved_config == Stage2Config.from_custom_config(CUSTOM_CONFIG)
    by_table = {counts["table"]: counts for counts in saved_counts["tables"]}
    for table, expected in expected_counts.items():
        assert {key: by_table[table][key] for key in expected} == expected
        assert by_table[table]["oov_rows_copied"] == features.NUM_OOV_BUCKETS
    # The fixture's Stage I folder has no config file, so Stage I's default applies.
    assert saved_counts["calibration"]["similarity"] == "cosine"
    assert saved_counts["calibration"]["rows"] == len(exported[0].train_rows)


def test_metrics_written_under_run_dir(exported):
    _, fn_args, _, _ = exported

    with open(os.path.join(fn_args.model_run_dir, stage2.METRICS_FILE), encoding="utf-8") as f:
        metrics = json.load(f)

    assert len(metrics["train"]["loss"]) == 1  # one epoch
    assert 0.0 < metrics["eval"]["auc"] < 1.0
    assert metrics["eval"]["distillation_loss"] > 0.0
