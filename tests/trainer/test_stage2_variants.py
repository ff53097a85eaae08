"""Stage II ranker: config, DCN-v2 forward pass, distillation, and each variant on MovieLens."""

import math
import os
import re

import numpy as np
import pytest
import stage2_testdata
import tensorflow as tf
import tensorflow_transform as tft

from trainer import ranker as ranker_lib
from trainer import stage2, stage2_data
from trainer.config import Stage1Config
from trainer.stage2_config import Stage2Config
from transforms import features

# ---------------------------------------------------------------------------
# Config.


def test_config_json_round_trip():
    config = Stage2Config(
        variant="frozen",
        deep_layer_sizes=(64, 8),
        cross_projection_dim=4,
        distillation_weight=0.25,
        embedding_dim=32,
    )

    assert Stage2Config.from_json(config.to_json()) == config
    assert config.to_dict()["deep_layer_sizes"] == [64, 8]


def test_config_from_custom_config():
    nested = Stage2Config.from_custom_config({"stage2": {"variant": "full", "epochs": 2}})
    flat = Stage2Config.from_custom_config({"variant": "cold"})

    assert (nested.variant, nested.epochs) == ("full", 2)
    assert flat.variant == "cold"
    assert Stage2Config.from_custom_config(None) == Stage2Config()


def test_config_defaults_follow_the_method():
    config = Stage2Config()

    assert config.epochs == 1
    assert config.table_learning_rate_multiplier == 0.1
    assert config.frozen_embedding_dropout == 0.5
    assert not config.distillation


def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=re.escape("unknown Stage II setting(s) ['epoch']")):
        Stage2Config.from_dict({"epoch": 2})


def test_config_invalid_variant():
    expected = "variant='warm' is invalid: use one of ['frozen', 'finetune', 'full', 'cold']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Stage2Config(variant="warm")


def test_config_negative_distillation_weight():
    expected = (
        "distillation_weight=-1.0 is invalid: use 0 to turn distillation off or a positive lambda"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        Stage2Config(distillation_weight=-1.0)


def test_config_seed_out_of_range():
    with pytest.raises(
        ValueError, match=re.escape("seed=-1 is invalid: use an integer in [0, 2**32)")
    ):
        Stage2Config(seed=-1)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps_per_epoch": 2.5}, "steps_per_epoch=2.5 is invalid: use an integer"),
        ({"learning_rate": "0.001"}, "learning_rate='0.001' is invalid: use a number"),
        ({"use_popularity_bucket": 1}, "use_popularity_bucket=1 is invalid: use true or false"),
        ({"deep_layer_sizes": "256"}, "deep_layer_sizes='256' is invalid: use a list of integers"),
    ],
)
def test_config_wrong_types(values, message):
    with pytest.raises(ValueError, match=re.escape(f"Stage II config {message}")):
        Stage2Config.from_dict(values)


def test_config_optional_counts_accept_none_and_json_floats():
    config = Stage2Config.from_dict({"steps_per_epoch": None, "eval_steps": 20.0})

    assert config.steps_per_epoch is None
    assert config.eval_steps == 20
    assert config.deep_layer_sizes == (256, 128)


def test_optimizers_per_variant():
    dense, table = ranker_lib.build_optimizers(Stage2Config(variant="finetune"))
    _, full_table = ranker_lib.build_optimizers(Stage2Config(variant="full"))

    # 1e-3 for the dense layers, 1e-3 * 0.1 for the tables.
    assert float(dense.learning_rate) == pytest.approx(1e-3)
    assert float(table.learning_rate) == pytest.approx(1e-4)
    assert full_table is None


# ---------------------------------------------------------------------------
# DCN-v2 forward pass against NumPy.

TINY_INPUTS = ranker_lib.RankerInputs(
    user_vocabulary_size=3,
    item_vocabulary_size=4,
    categorical_side_features={"item_genre_xf": 3},
    numeric_side_features=("user_age_xf",),
)
TINY_BATCH = {
    "user_id_xf": tf.constant([0, 2, 3], tf.int64),
    "item_id_xf": tf.constant([4, 1, 0], tf.int64),
    "item_genre_xf": tf.constant([2, 0, 1], tf.int64),
    "user_age_xf": tf.constant([0.5, -1.0, 2.0], tf.float32),
}


def numpy_forward(ranker, batch, structure):
    """Reference DCN-v2: x_{l+1} = x0 * (W x_l + b) + x_l, then the deep tower and logit."""
    x0 = np.concatenate(
        [
            ranker.user_table.embeddings.numpy()[batch["user_id_xf"].numpy()],
            ranker.item_table.embeddings.numpy()[batch["item_id_xf"].numpy()],
            ranker.side_embeddings["item_genre_xf"].embeddings.numpy()[
                batch["item_genre_xf"].numpy()
            ],
            batch["user_age_xf"].numpy()[:, None],
        ],
        axis=1,
    )
    crossed = x0
    for layer in ranker.cross_layers:
        weights = layer.get_weights()
        if len(weights) == 2:  # full rank: kernel, bias
            projected = crossed @ weights[0] + weights[1]
        else:  # low rank: U kernel, V kernel, bias
            projected = crossed @ weights[0] @ weights[1] + weights[2]
        crossed = x0 * projected + crossed

    deep = crossed if structure == "stacked" else x0
    for layer in ranker.deep_layers:
        kernel, bias = layer.get_weights()
        deep = np.maximum(deep @ kernel + bias, 0.0)
    hidden = deep if structure == "stacked" else np.concatenate([crossed, deep], axis=1)
    kernel, bias = ranker.logit_layer.get_weights()
    return (hidden @ kernel + bias)[:, 0]


@pytest.mark.parametrize(
    ("structure", "projection_dim"),
    [("stacked", None), ("parallel", None), ("stacked", 2), ("parallel", 2)],
)
def test_dcn_forward_matches_numpy(structure, projection_dim):
    config = Stage2Config(
        variant="full",
        structure=structure,
        cross_projection_dim=projection_dim,
        cross_layers=2,
        deep_layer_sizes=(5, 3),
        side_feature_dim=2,
    )
    ranker = ranker_lib.DcnRanker(TINY_INPUTS, config, embedding_dim=2)

    logits = ranker(TINY_BATCH).numpy()

    np.testing.assert_allclose(logits, numpy_forward(ranker, TINY_BATCH, structure), atol=1e-5)


def test_frozen_tables_are_not_trainable():
    ranker = ranker_lib.DcnRanker(TINY_INPUTS, Stage2Config(variant="frozen"), embedding_dim=2)
    ranker(TINY_BATCH)

    trainable = {id(variable) for variable in ranker.trainable_variables}
    assert all(id(variable) not in trainable for variable in ranker.table_variables)
    assert ranker.id_dropout.rate == 0.5


# ---------------------------------------------------------------------------
# Distillation and the teacher's calibration, by hand.


def test_distillation_loss_by_hand():
    teacher = tf.constant([0.9, 0.2])
    logits = tf.constant([2.0, -1.0])

    # p = sigmoid(logits) = [0.880797, 0.268941].
    # Row 1: -(0.9 ln 0.880797 + 0.1 ln 0.119203) = 0.114237 + 0.212693 = 0.326930.
    # Row 2: -(0.2 ln 0.268941 + 0.8 ln 0.731059) = 0.262652 + 0.250608 = 0.513261.
    # Mean: 0.420095.
    loss = ranker_lib.distillation_loss(teacher, logits).numpy()

    assert loss == pytest.approx(0.420095, abs=1e-5)
    probabilities = 1.0 / (1.0 + np.exp(-logits.numpy()))
    reference = -np.mean(
        teacher.numpy() * np.log(probabilities)
        + (1.0 - teacher.numpy()) * np.log(1.0 - probabilities)
    )
    assert loss == pytest.approx(reference, rel=1e-6)


def test_teacher_probability_by_hand():
    users = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    items = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
    teacher = ranker_lib.DistillationTeacher(users, items, "cosine", slope=2.0, intercept=-1.0)

    batch = {"user_id_xf": tf.constant([0, 1]), "item_id_xf": tf.constant([0, 1])}
    probabilities = teacher(batch).numpy()

    # cos([3, 4], [1, 0]) = 0.6 -> sigmoid(2 * 0.6 - 1) = sigmoid(0.2) = 0.549834.
    # cos([0, 2], [1, 1]) = 0.707107 -> sigmoid(0.414214) = 0.602098.
    np.testing.assert_allclose(probabilities, [0.549834, 0.602098], atol=1e-6)


def test_total_loss_adds_lambda_times_distillation():
    config = Stage2Config(variant="full", deep_layer_sizes=(4,), side_feature_dim=2)
    ranker = ranker_lib.DcnRanker(TINY_INPUTS, config, embedding_dim=2)
    rows = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 5, np.float32)
    teacher = ranker_lib.DistillationTeacher(rows[:4], rows[4:], "dot", slope=3.0, intercept=0.5)
    model = ranker_lib.RankerTrainingModel(ranker, None, teacher, distillation_weight=0.3)
    labels = tf.constant([1.0, 0.0, 1.0])

    logits = ranker(TINY_BATCH)
    total, label_loss, distill = model.compute_losses(TINY_BATCH, labels, logits)

    # Dot products of user rows [1, 0] and item rows [0, 1] are 0, so the teacher returns
    # sigmoid(0.5) = 0.622459 for every pair.
    p = 1.0 / (1.0 + np.exp(-logits.numpy()))
    y = labels.numpy()
    expected_label = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    expected_distill = -np.mean(0.622459 * np.log(p) + 0.377541 * np.log(1 - p))
    assert label_loss.numpy() == pytest.approx(expected_label, rel=1e-5)
    assert distill.numpy() == pytest.approx(expected_distill, rel=1e-5)
    assert total.numpy() == pytest.approx(expected_label + 0.3 * expected_distill, rel=1e-5)


def test_platt_fit_solves_likelihood_equations():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=2000)
    labels = (rng.random(2000) < 1.0 / (1.0 + np.exp(-(2.0 * scores - 1.0)))).astype(int)

    slope, intercept = ranker_lib.fit_platt_scaling(scores, labels)

    # At the maximum likelihood, sum(p - y) = 0 and sum((p - y) * score) = 0.
    residual = 1.0 / (1.0 + np.exp(-(slope * scores + intercept))) - labels
    assert abs(residual.sum()) < 1e-3
    assert abs((residual * scores).sum()) < 1e-3
    # The generating slope and intercept are 2 and -1.
    assert slope == pytest.approx(2.0, abs=0.3)
    assert intercept == pytest.approx(-1.0, abs=0.3)


def test_platt_fit_rejects_one_class():
    expected = (
        "Platt scaling needs labels of both classes, got 3 positive of 3 rows: distill only "
        "on a train split with label 0 and 1 rows"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        ranker_lib.fit_platt_scaling(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]))


def test_teacher_similarity_from_stage1_config(tmp_path):
    base_model = tmp_path / "Format-Serving"
    export_dir = base_model / features.EMBEDDING_EXPORT_DIR
    export_dir.mkdir(parents=True)

    assert stage2.resolve_teacher_similarity(Stage2Config(), str(export_dir)) == "cosine"
    config_path = base_model / features.STAGE1_CONFIG_FILE
    config_path.write_text(Stage1Config(similarity="dot").to_json(), encoding="utf-8")
    assert stage2.resolve_teacher_similarity(Stage2Config(), str(export_dir)) == "dot"
    configured = Stage2Config(teacher_similarity="cosine")
    assert stage2.resolve_teacher_similarity(configured, str(export_dir)) == "cosine"


# ---------------------------------------------------------------------------
# Each variant on MovieLens 100K, a few steps each.

STEPS = 30
EVAL_BATCHES = 5
_TRAINED = {}


def small_config(variant, **overrides):
    values = dict(
        variant=variant,
        batch_size=256,
        steps_per_epoch=STEPS,
        deep_layer_sizes=(32, 16),
        side_feature_dim=4,
        shuffle_buffer=2048,
        learning_rate=3e-3,
        use_popularity_bucket=True,
        seed=1,
    )
    values.update(overrides)
    return Stage2Config(**values)


@pytest.fixture
def movielens(movielens_dir):
    """The transformed splits (one Transform run per session) and the Stage I base model."""
    data = stage2_testdata.transformed_movielens(movielens_dir)
    base_model, expected_counts = stage2_testdata.stage1_base_model(data)
    return data, base_model, expected_counts


def train_variant(movielens, variant, **overrides):
    """Build, warm-start and train one variant once; later calls reuse the result."""
    key = (variant, tuple(sorted(overrides.items())))
    if key in _TRAINED:
        return _TRAINED[key]

    data, base_model, _ = movielens
    config = small_config(variant, **overrides)
    tft_output = tft.TFTransformOutput(data.transform_output)
    if "scan" not in _TRAINED:
        _TRAINED["scan"] = stage2_data.scan_train_split(data.train_pattern, tft_output)
    export_dir = stage2.find_embedding_export(base_model)
    model, counts, calibration = stage2.build_model(
        config, tft_output, export_dir, _TRAINED["scan"]
    )

    eval_data = stage2_data.make_dataset(
        data.eval_pattern, tft_output, model.ranker.ranker_inputs.feature_keys(True), 1000
    ).take(EVAL_BATCHES)
    before = [variable.numpy().copy() for variable in model.ranker.table_variables]
    eval_before = model.evaluate(eval_data, return_dict=True, verbose=0)
    history = stage2.fit_ranker(model, config, tft_output, [data.train_pattern])
    eval_after = model.evaluate(eval_data, return_dict=True, verbose=0)
    after = [variable.numpy().copy() for variable in model.ranker.table_variables]

    _TRAINED[key] = dict(
        model=model,
        counts=counts,
        calibration=calibration,
        before=before,
        after=after,
        eval_before=eval_before,
        eval_after=eval_after,
        history=history,
        tft_output=tft_output,
    )
    return _TRAINED[key]


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["frozen", "finetune", "full", "cold"])
def test_variant_lowers_eval_loss(movielens, variant):
    trained = train_variant(movielens, variant)

    before = trained["eval_before"]["label_loss"]
    after = trained["eval_after"]["label_loss"]
    assert after < before, f"{variant}: eval cross-entropy {before:.4f} -> {after:.4f}"
    assert len(trained["history"]["loss"]) == 1  # one epoch


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["frozen", "finetune", "full"])
def test_warm_start_counts_match_vocabularies(movielens, variant):
    _, _, expected = movielens
    trained = train_variant(movielens, variant)

    counts = {counts.table: counts for counts in trained["counts"]}
    for table in (features.USER_ID, features.ITEM_ID):
        assert counts[table].copied == expected[table]["copied"], table
        assert counts[table].initialised == expected[table]["initialised"], table
        assert counts[table].ignored == expected[table]["ignored"], table


@pytest.mark.e2e
def test_cold_variant_has_no_warm_start(movielens):
    trained = train_variant(movielens, "cold")

    assert trained["counts"] == []
    # The initialiser draws from [-0.05, 0.05]; the Stage I rows are standard normal.
    assert np.max(np.abs(trained["before"][1])) <= 0.05


@pytest.mark.e2e
def test_frozen_tables_unchanged_and_equal_stage1_rows(movielens):
    data, base_model, _ = movielens
    trained = train_variant(movielens, "frozen")

    for before, after in zip(trained["before"], trained["after"], strict=True):
        np.testing.assert_array_equal(before, after)

    # Read the export independently of the warm start: every shared token's row is the
    # Stage I row, after training too.
    table_dir = os.path.join(base_model, features.EMBEDDING_EXPORT_DIR, features.ITEM_ID)
    with open(os.path.join(table_dir, features.EMBEDDING_TOKENS_FILE), encoding="utf-8") as f:
        export_tokens = f.read().split("\n")[:-1]
    export_matrix = np.load(os.path.join(table_dir, features.EMBEDDING_MATRIX_FILE))
    vocabulary = stage2_data.vocabulary_tokens(trained["tft_output"], features.ITEM_ID)
    export_row = {token: row for row, token in enumerate(export_tokens)}
    shared = [index for index, token in enumerate(vocabulary) if token in export_row]
    assert len(shared) > 1000
    for index in shared:
        np.testing.assert_array_equal(
            trained["after"][1][index], export_matrix[export_row[vocabulary[index]]]
        )


@pytest.mark.e2e
def test_finetune_moves_tables_less_than_full(movielens):
    finetune = train_variant(movielens, "finetune")
    full = train_variant(movielens, "full")

    def mean_change(trained):
        changes = [
            np.abs(a - b).mean() for a, b in zip(trained["after"], trained["before"], strict=True)
        ]
        return float(np.mean(changes))

    finetune_change = mean_change(finetune)
    full_change = mean_change(full)
    # Both start from the same rows and see the same batches; Adam steps scale with the
    # learning rate, so the finetune tables (rate x 0.1) move several times less.
    assert 0.0 < finetune_change < 0.5 * full_change, (finetune_change, full_change)


@pytest.mark.e2e
def test_distillation_trains_with_calibrated_teacher(movielens):
    trained = train_variant(movielens, "finetune", distillation_weight=1.0)
    scan = _TRAINED["scan"]

    history = trained["history"]
    assert math.isfinite(history["distillation_loss"][0])
    assert history["loss"][0] > history["label_loss"][0]  # lambda x distillation > 0 added

    # With an intercept, the maximum-likelihood calibration makes the teacher's mean
    # probability over the train split equal the label rate.
    teacher = trained["model"].teacher
    probabilities = teacher(
        {
            "user_id_xf": tf.constant(scan.user_index),
            "item_id_xf": tf.constant(scan.item_index),
        }
    ).numpy()
    assert probabilities.mean() == pytest.approx(scan.labels.mean(), abs=1e-4)
    assert trained["calibration"]["rows"] == len(scan.labels)
