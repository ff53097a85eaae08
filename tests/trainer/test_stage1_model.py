"""Hand-worked checks of the Stage I model: towers, logQ from the batch, the unseen-user term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import Stage1Config
from trainer.stage1_data import ITEM_IDS, USER_IDS, Vocabulary
from trainer.stage1_model import Stage1Model, make_optimizer, sampler_probabilities
from transforms import features

USERS = Vocabulary(features.USER_ID, (b"a", b"b"))
ITEMS = Vocabulary(features.ITEM_ID, (b"x", b"y", b"z"))
# Rows a, b, OOV and x, y, z, OOV.
USER_TABLE = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
ITEM_TABLE = [[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
BATCH = {
    USER_IDS: tf.constant([0, 1], tf.int64),  # users a, b
    ITEM_IDS: tf.constant([0, 2], tf.int64),  # items x, z
    features.ITEM_SAMPLING_PROBABILITY: tf.constant([0.5, 0.25]),
    features.WEIGHT: tf.constant([1.0, 3.0]),
}


def _model(**overrides) -> Stage1Model:
    config = Stage1Config(embedding_dim=2, temperature=0.5, **overrides)
    model = Stage1Model(
        config,
        {features.USER_ID: USERS, features.ITEM_ID: ITEMS},
        {},
        np.array([2.0, 1.0, 1.0]),
        tf.distribute.get_strategy(),
        make_optimizer(config),
    )
    model.compile(optimizer=make_optimizer(config))
    model.build_tables()
    model.tables.table_variables(features.USER_ID)[0].assign(USER_TABLE)
    model.tables.table_variables(features.ITEM_ID)[0].assign(ITEM_TABLE)
    return model


def _log1p_exp(x: float) -> float:
    return math.log(1 + math.exp(x))


# Normalised towers: a = [1, 0], b = [0, 1], OOV user = [r, r] with r = 1/sqrt(2);
# x = [1, 0], z = [r, r]. Logits = cos / 0.5 - log p, with p(x) = 0.5, p(z) = 0.25:
#   row a: [2 + ln 2, 2r + ln 4] = [2.693147, 2.800508] -> loss log(1 + e^0.107361)
#   row b: [0 + ln 2, 2r + ln 4] = [0.693147, 2.800508] -> loss log(1 + e^-2.107361)
#   OOV query: [2r + ln 2, 2 + ln 4] = [2.107361, 3.386294]
#     as row a (label x): log(1 + e^1.278933); as row b (label z): log(1 + e^-1.278933)
MAIN = [_log1p_exp(0.107361), _log1p_exp(-2.107361)]  # [0.748268, 0.114719]
UNSEEN = [_log1p_exp(1.278933), _log1p_exp(-1.278933)]  # [1.524491, 0.245558]


def test_main_loss_by_hand():
    values = _model(unseen_user_loss_weight=0.0).per_example_loss(BATCH).numpy()
    np.testing.assert_allclose(values, MAIN, atol=1e-5)


def test_unseen_user_term_added_with_weight():
    values = _model(unseen_user_loss_weight=0.5).per_example_loss(BATCH).numpy()
    expected = [MAIN[0] + 0.5 * UNSEEN[0], MAIN[1] + 0.5 * UNSEEN[1]]  # [1.510514, 0.237498]
    np.testing.assert_allclose(values, expected, atol=1e-5)


def test_train_step_reports_weighted_mean_loss():
    # The reported loss is computed before the update: (1 * l_a + 3 * l_b) / 4.
    model = _model(unseen_user_loss_weight=0.0)
    logs = model.train_step(BATCH)
    assert float(logs["loss"]) == pytest.approx((MAIN[0] + 3 * MAIN[1]) / 4, abs=1e-5)
    assert not np.allclose(model.tables.table_values(features.USER_ID).numpy(), USER_TABLE)


def test_tower_matrices_are_normalised_with_oov_row_last():
    model = _model()
    root = 1 / math.sqrt(2)
    np.testing.assert_allclose(
        model.query_matrix().numpy(), [[1, 0], [0, 1], [root, root]], atol=1e-6
    )
    np.testing.assert_allclose(
        model.candidate_matrix().numpy(), [[1, 0], [0, 1], [root, root], [0, 0]], atol=1e-6
    )


def test_dot_similarity_skips_normalisation_and_temperature():
    # Row a: [3, 1] -> [3 + ln 2, 1 + ln 4]; loss log(1 + e^(1.386294 - 3.693147)).
    model = _model(similarity="dot", unseen_user_loss_weight=0.0)
    values = model.per_example_loss(BATCH).numpy()
    assert values[0] == pytest.approx(_log1p_exp(1 + math.log(4) - 3 - math.log(2)), abs=1e-5)


def test_sampler_probabilities():
    uniform = Stage1Config(negative_sampler="uniform")
    np.testing.assert_allclose(
        sampler_probabilities(uniform, np.array([4.0, 1.0, 0.0])), [1 / 3, 1 / 3, 1 / 3]
    )
    # count ** 0.5: [2, 1, 0] / 3.
    power = Stage1Config(negative_sampler="count_power", sampler_power=0.5)
    np.testing.assert_allclose(
        sampler_probabilities(power, np.array([4.0, 1.0, 0.0])), [2 / 3, 1 / 3, 0.0]
    )
    # count ** 0: every item with engagements alike, and none for the item without.
    flat = Stage1Config(negative_sampler="count_power", sampler_power=0.0)
    np.testing.assert_allclose(
        sampler_probabilities(flat, np.array([4.0, 1.0, 0.0])), [1 / 2, 1 / 2, 0.0]
    )


def test_sampled_negatives_follow_sampler():
    model = _model(num_sampled_negatives=2000, sampler_power=1.0)
    ids, probability = model.sample_negatives()
    ids = ids.numpy()
    # Counts [2, 1, 1] give probabilities [0.5, 0.25, 0.25]; the OOV row is never drawn.
    assert set(ids.tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(np.bincount(ids, minlength=3) / 2000, [0.5, 0.25, 0.25], atol=0.04)
    np.testing.assert_allclose(probability.numpy(), np.array([0.5, 0.25, 0.25])[ids])
