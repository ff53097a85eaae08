"""Hand-worked and NumPy-reference checks of the Stage I contrastive loss."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import tensorflow as tf

from trainer import losses
from transforms import features


def reference_loss(
    query,
    candidates,
    ids,
    probability=None,
    sampled=None,
    sampled_ids=None,
    sampled_probability=None,
    temperature=None,
    mask=True,
):
    """Per-row softmax cross-entropy written with plain NumPy loops."""
    query = np.asarray(query, np.float64)
    all_candidates = np.asarray(candidates, np.float64)
    all_ids = list(ids)
    if sampled is not None:
        all_candidates = np.concatenate([all_candidates, np.asarray(sampled, np.float64)])
        all_ids += list(sampled_ids)

    logits = query @ all_candidates.T
    if temperature is not None:
        logits = logits / temperature
    if probability is not None:
        all_probability = list(probability) + list(sampled_probability or [])
        logits = logits - np.log(np.asarray(all_probability, np.float64))[None, :]

    rows = len(query)
    if mask:
        for i in range(rows):
            for j in range(len(all_ids)):
                if j != i and all_ids[j] == ids[i]:
                    logits[i, j] = -1e9

    peak = logits.max(axis=1, keepdims=True)
    log_sum_exp = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    return log_sum_exp - logits[np.arange(rows), np.arange(rows)]


def loss_of(query, candidates, ids, **kwargs) -> np.ndarray:
    return losses.contrastive_loss(
        tf.constant(query, tf.float32),
        tf.constant(candidates, tf.float32),
        tf.constant(ids, tf.int64),
        **kwargs,
    ).numpy()


IDENTITY = [[1.0, 0.0], [0.0, 1.0]]


def test_two_rows_plain_dot_product():
    # logits = q c^T = [[1, 0], [0, 1]]; each row: -log(e / (e + 1)) = log(1 + e^-1).
    expected = math.log(1 + math.exp(-1))  # 0.313262
    values = loss_of(IDENTITY, IDENTITY, [10, 11])
    np.testing.assert_allclose(values, [expected, expected], rtol=1e-6)
    assert expected == pytest.approx(0.313262, abs=1e-6)


def test_temperature_divides_scores():
    # T = 0.5 gives logits [[2, 0], [0, 2]]; each row: log(1 + e^-2) = 0.126928.
    values = loss_of(IDENTITY, IDENTITY, [10, 11], temperature=0.5)
    np.testing.assert_allclose(values, [0.126928, 0.126928], atol=1e-6)


def test_logq_corrects_every_column_including_positive():
    # p = [0.5, 0.25]: subtract log p_j from column j of every row.
    # Row 0: [1 + ln 2, 0 + ln 4] = [1.693147, 1.386294]
    #   loss = log(1 + e^(1.386294 - 1.693147)) = log(1 + e^-0.306853) = log(1.735759) = 0.551444
    # Row 1: [0 + ln 2, 1 + ln 4] = [0.693147, 2.386294]
    #   loss = log(1 + e^(0.693147 - 2.386294)) = log(1 + e^-1.693147) = log(1.183940) = 0.168848
    probability = tf.constant([0.5, 0.25])
    values = loss_of(IDENTITY, IDENTITY, [10, 11], candidate_sampling_probability=probability)
    np.testing.assert_allclose(values, [0.551444, 0.168848], atol=1e-6)

    logits = losses.contrastive_logits(
        tf.constant(IDENTITY),
        tf.constant(IDENTITY),
        tf.constant([10, 11], tf.int64),
        candidate_sampling_probability=probability,
    ).numpy()
    np.testing.assert_allclose(logits, [[1.693147, 1.386294], [0.693147, 2.386294]], atol=1e-6)


def _duplicate_case(cases_dir):
    with open(cases_dir / "duplicate_items_in_batch.csv", newline="") as source:
        rows = list(csv.DictReader(source))
    item_tokens = sorted({row[features.ITEM_ID] for row in rows})
    item_ids = [item_tokens.index(row[features.ITEM_ID]) for row in rows]
    return rows, item_tokens, item_ids


def test_accidental_hits_masked_in_duplicate_case(cases_dir):
    rows, item_tokens, item_ids = _duplicate_case(cases_dir)
    assert len(rows) == 16
    assert item_ids.count(item_tokens.index("i_hot")) == 8

    # Every query and candidate is the same unit vector, so every logit is 1. Unmasked,
    # each row's loss is log 16. Masking leaves an i_hot row its own column plus the 8
    # distinct items: log 9 = 2.197225. An i<k> row has no duplicate: log 16 = 2.772589.
    same = np.tile([[1.0, 0.0]], (16, 1))
    hot = [row[features.ITEM_ID] == "i_hot" for row in rows]
    # Equal vectors everywhere keep the promise of one_embedding_per_id, so both masking
    # paths must give the hand-worked values.
    for one_embedding_per_id in (False, True):
        values = loss_of(same, same, item_ids, one_embedding_per_id=one_embedding_per_id)
        np.testing.assert_allclose(values[hot], np.full(8, math.log(9)), rtol=1e-6)
        np.testing.assert_allclose(
            values[[not h for h in hot]], np.full(8, math.log(16)), rtol=1e-6
        )

    unmasked = loss_of(same, same, item_ids, remove_accidental_hits=False)
    np.testing.assert_allclose(unmasked, np.full(16, math.log(16)), rtol=1e-6)


def test_masked_columns_get_large_negative_logit(cases_dir):
    rows, item_tokens, item_ids = _duplicate_case(cases_dir)
    rng = np.random.default_rng(0)
    query = rng.normal(size=(16, 4)).astype(np.float32)
    candidates = rng.normal(size=(16, 4)).astype(np.float32)

    logits = losses.contrastive_logits(
        tf.constant(query), tf.constant(candidates), tf.constant(item_ids, tf.int64)
    ).numpy()
    probabilities = tf.nn.softmax(logits).numpy()
    hot = item_tokens.index("i_hot")
    for i in range(16):
        for j in range(16):
            is_hit = i != j and item_ids[i] == item_ids[j]
            if is_hit:
                assert logits[i, j] == np.float32(losses.LARGE_NEGATIVE_LOGIT)
                # exp(-1e9 - max) is exactly 0 in float32: the column is gone, not shrunk.
                assert probabilities[i, j] == 0.0
            else:
                assert logits[i, j] == pytest.approx(query[i] @ candidates[j], abs=1e-5)
    assert sum(item_ids[i] == hot for i in range(16)) == 8

    np.testing.assert_allclose(
        loss_of(query, candidates, item_ids),
        reference_loss(query, candidates, item_ids),
        rtol=1e-5,
    )


def test_sampled_negatives_extend_and_mask():
    # Candidates: c0 = [1, 0] (id 10), c1 = [0, 1] (id 11), sampled s0 = [1, 0] (id 10,
    # row 0's positive: masked for row 0 only) and s1 = [0, 0] (id 12).
    # Row 0 logits [1, 0, masked, 0]: loss = log(1 + 2/e) = log(1.735759) = 0.551444.
    # Row 1 logits [0, 1, 0, 0]: loss = log(1 + 3/e) = log(2.103638) = 0.743668.
    values = loss_of(
        IDENTITY,
        IDENTITY,
        [10, 11],
        sampled_embeddings=tf.constant([[1.0, 0.0], [0.0, 0.0]]),
        sampled_ids=tf.constant([10, 12], tf.int64),
    )
    np.testing.assert_allclose(values, [0.551444, 0.743668], atol=1e-6)


def test_sampled_negatives_use_sampler_probability():
    rng = np.random.default_rng(1)
    query = rng.normal(size=(4, 3))
    candidates = rng.normal(size=(4, 3))
    sampled = rng.normal(size=(3, 3))
    ids = [1, 2, 1, 3]
    sampled_ids = [3, 7, 8]
    probability = [0.1, 0.2, 0.1, 0.05]
    sampled_probability = [0.01, 0.3, 0.02]

    values = loss_of(
        query,
        candidates,
        ids,
        candidate_sampling_probability=tf.constant(probability),
        sampled_embeddings=tf.constant(sampled, tf.float32),
        sampled_ids=tf.constant(sampled_ids, tf.int64),
        sampled_probability=tf.constant(sampled_probability),
        temperature=0.05,
    )
    expected = reference_loss(
        query, candidates, ids, probability, sampled, sampled_ids, sampled_probability, 0.05
    )
    np.testing.assert_allclose(values, expected, rtol=1e-4)


@pytest.mark.parametrize("one_embedding_per_id", [False, True])
def test_batch_of_one_row(one_embedding_per_id):
    # One row and no sampled negatives: the softmax over one column is 1, the loss 0.
    values = loss_of([[0.3, 0.4]], [[0.6, 0.8]], [5], one_embedding_per_id=one_embedding_per_id)
    np.testing.assert_allclose(values, [0.0], atol=1e-7)

    # With two sampled negatives the row has three columns; compare with the reference.
    sampled = [[0.0, 1.0], [1.0, 0.0]]
    values = loss_of(
        [[0.3, 0.4]],
        [[0.6, 0.8]],
        [5],
        sampled_embeddings=tf.constant(sampled),
        sampled_ids=tf.constant([6, 7], tf.int64),
        temperature=0.1,
        one_embedding_per_id=one_embedding_per_id,
    )
    expected = reference_loss([[0.3, 0.4]], [[0.6, 0.8]], [5], None, sampled, [6, 7], None, 0.1)
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_batch_of_one_row_with_shared_query():
    # The training step's shape at batch size 1: one row, one sampled copy of its own item
    # (an accidental hit), and the shared OOV query. Both rows see the columns [5, 5, 6].
    query = tf.constant([[0.3, 0.4]])
    candidates = tf.constant([[0.6, 0.8]])
    sampled = tf.constant([[0.6, 0.8], [1.0, 0.0]])
    shared = tf.constant([0.5, -0.5])
    arguments = {
        "candidate_sampling_probability": tf.constant([0.2]),
        "sampled_embeddings": sampled,
        "sampled_ids": tf.constant([5, 6], tf.int64),
        "sampled_probability": tf.constant([0.4, 0.1]),
        "temperature": 0.1,
        "shared_query_embedding": shared,
    }
    for one_embedding_per_id in (False, True):
        values, shared_values = losses.contrastive_losses(
            query,
            candidates,
            tf.constant([5], tf.int64),
            one_embedding_per_id=one_embedding_per_id,
            **arguments,
        )
        for row_query, result in ((query.numpy(), values), ([shared.numpy()], shared_values)):
            expected = reference_loss(
                row_query,
                candidates.numpy(),
                [5],
                [0.2],
                sampled.numpy(),
                [5, 6],
                [0.4, 0.1],
                0.1,
            )
            np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("one_embedding_per_id", [False, True])
def test_short_batch_in_one_traced_function(one_embedding_per_id):
    # One tf.function with an unknown batch size serves a full batch, a short last batch
    # and a batch of one, as the training loop's compiled step does.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3], tf.float32),
            tf.TensorSpec([None, 3], tf.float32),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.float32),
        ]
    )
    def loss(query, candidates, ids, probability):
        return losses.contrastive_loss(
            query,
            candidates,
            ids,
            candidate_sampling_probability=probability,
            temperature=0.05,
            one_embedding_per_id=one_embedding_per_id,
        )

    rng = np.random.default_rng(2)
    # Candidates read from a table by id, so equal ids have equal embeddings, as the fast
    # path requires.
    table = rng.normal(size=(2, 3)).astype(np.float32)
    for rows in (4, 3, 1):
        query = rng.normal(size=(rows, 3)).astype(np.float32)
        ids = rng.integers(0, 2, size=rows)
        candidates = table[ids]
        probability = np.array([0.3, 0.1], np.float32)[ids]
        values = loss(query, candidates, ids, probability).numpy()
        expected = reference_loss(query, candidates, ids, probability, temperature=0.05)
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5)


def test_sampled_without_ids_is_rejected():
    with pytest.raises(ValueError, match="^sampled_ids is None but sampled_embeddings was given"):
        loss_of(IDENTITY, IDENTITY, [10, 11], sampled_embeddings=tf.constant(IDENTITY))


def test_sampled_without_probability_is_rejected_under_logq():
    with pytest.raises(
        ValueError, match="^sampled_probability is None but candidate_sampling_probability"
    ):
        loss_of(
            IDENTITY,
            IDENTITY,
            [10, 11],
            candidate_sampling_probability=tf.constant([0.5, 0.5]),
            sampled_embeddings=tf.constant(IDENTITY),
            sampled_ids=tf.constant([1, 2], tf.int64),
        )


def _broadcast_reference(row_logits, positive_ids, candidate_ids):
    rows = len(positive_ids)
    logits = np.tile(np.asarray(row_logits, np.float64), (rows, 1))
    for i in range(rows):
        for j in range(len(candidate_ids)):
            if j != i and candidate_ids[j] == positive_ids[i]:
                logits[i, j] = -1e9
    peak = logits.max(axis=1, keepdims=True)
    log_sum_exp = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    return log_sum_exp - logits[np.arange(rows), np.arange(rows)]


def test_shared_query_loss_by_hand():
    # Row logits [1, 1, 2, 0] over ids [7, 7, 8, 7]; rows 0 and 1 (both item 7) and row 2.
    # Row 0 keeps its own column 0 and column 2 (item 8): log(e + e^2) - 1 = log(1 + e)
    # = 1.313262; row 1 likewise with column 1.
    # Row 2 keeps every column: log(e + e + e^2 + 1) - 2 = log(13.825623) - 2 = 0.626523.
    values = losses.shared_query_softmax_loss(
        tf.constant([1.0, 1.0, 2.0, 0.0]),
        tf.constant([7, 7, 8], tf.int64),
        tf.constant([7, 7, 8, 7], tf.int64),
    ).numpy()
    row_two = math.log(2 * math.e + math.e**2 + 1) - 2
    np.testing.assert_allclose(values, [1.313262, 1.313262, row_two], atol=1e-6)
    assert row_two == pytest.approx(0.626523, abs=1e-6)


def test_shared_query_loss_matches_broadcast_rows(cases_dir):
    _, _, item_ids = _duplicate_case(cases_dir)
    rng = np.random.default_rng(4)
    # The 16 in-batch columns plus 5 sampled ones. A sampled copy of an in-batch item has
    # another sampling probability, so equal ids need not mean equal logits.
    candidate_ids = item_ids + [item_ids[0], 3, item_ids[9], 40, 41]
    row_logits = rng.normal(scale=3.0, size=len(candidate_ids))
    for mask in (True, False):
        values = losses.shared_query_softmax_loss(
            tf.constant(row_logits, tf.float32),
            tf.constant(item_ids, tf.int64),
            tf.constant(candidate_ids, tf.int64),
            remove_accidental_hits=mask,
        ).numpy()
        if mask:
            expected = _broadcast_reference(row_logits, item_ids, candidate_ids)
        else:
            expected = _broadcast_reference(row_logits, item_ids, list(range(100, 121)))
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)


def test_fast_loss_equals_softmax_of_explicit_logits(cases_dir):
    # contrastive_loss folds the temperature and logQ into the matmul and masks without
    # rebuilding the diagonal; it must equal the softmax over contrastive_logits.
    _, _, item_ids = _duplicate_case(cases_dir)
    rng = np.random.default_rng(5)
    arguments = {
        "candidate_sampling_probability": tf.constant(rng.uniform(0.01, 0.2, 16), tf.float32),
        "sampled_embeddings": tf.constant(rng.normal(size=(4, 3)), tf.float32),
        "sampled_ids": tf.constant([item_ids[0], 2, 30, 31], tf.int64),
        "sampled_probability": tf.constant(rng.uniform(0.01, 0.2, 4), tf.float32),
        "temperature": 0.05,
    }
    query = tf.constant(rng.normal(size=(16, 3)), tf.float32)
    candidates = tf.constant(rng.normal(size=(16, 3)), tf.float32)
    ids = tf.constant(item_ids, tf.int64)
    for mask in (True, False):
        fast = losses.contrastive_loss(
            query, candidates, ids, remove_accidental_hits=mask, **arguments
        ).numpy()
        explicit = losses.softmax_loss(
            losses.contrastive_logits(
                query, candidates, ids, remove_accidental_hits=mask, **arguments
            )
        ).numpy()
        np.testing.assert_allclose(fast, explicit, rtol=1e-4, atol=1e-4)


def _keyed_arguments(cases_dir):
    # Candidates read from one table by item id, so equal ids have equal embeddings. The
    # sampled negatives repeat two in-batch items under other (sampler) probabilities.
    _, _, item_ids = _duplicate_case(cases_dir)
    rng = np.random.default_rng(6)
    table = tf.constant(rng.normal(size=(40, 3)), tf.float32)
    frequency = rng.uniform(0.01, 0.2, 40)
    sampler = rng.uniform(0.001, 0.05, 40)
    sampled_ids = [item_ids[0], item_ids[0], item_ids[9], 30, 31]
    arguments = {
        "candidate_sampling_probability": tf.constant(frequency[item_ids], tf.float32),
        "sampled_ids": tf.constant(sampled_ids, tf.int64),
        "sampled_probability": tf.constant(sampler[sampled_ids], tf.float32),
        "temperature": 0.05,
    }
    query = tf.constant(rng.normal(size=(16, 3)), tf.float32)
    return query, table, item_ids, arguments


def test_keyed_loss_equals_masked_softmax(cases_dir):
    query, table, item_ids, arguments = _keyed_arguments(cases_dir)
    ids = tf.constant(item_ids, tf.int64)

    def fast_and_explicit():
        # Gathered under the tape: the two paths send a row's gradient through different
        # copies of an item (the fast one through its hit columns too), so only the table's
        # gradient, which sums the copies, must agree.
        candidates = tf.gather(table, ids)
        arguments["sampled_embeddings"] = tf.gather(table, arguments["sampled_ids"])
        fast = losses.contrastive_loss(
            query, candidates, ids, one_embedding_per_id=True, **arguments
        )
        explicit = losses.softmax_loss(
            losses.contrastive_logits(query, candidates, ids, **arguments)
        )
        return fast, explicit

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([query, table])
        fast, explicit = fast_and_explicit()
        fast_total, explicit_total = tf.reduce_sum(fast), tf.reduce_sum(explicit)
    # Row 0 has a loss near 0 next to losses in the hundreds: the subtraction of its hits
    # leaves float32 rounding of about 1e-5 there.
    np.testing.assert_allclose(fast.numpy(), explicit.numpy(), rtol=1e-5, atol=1e-4)

    sampled = arguments["sampled_embeddings"].numpy()
    expected = reference_loss(
        query.numpy(),
        tf.gather(table, ids).numpy(),
        item_ids,
        arguments["candidate_sampling_probability"].numpy(),
        sampled,
        arguments["sampled_ids"].numpy().tolist(),
        arguments["sampled_probability"].numpy().tolist(),
        0.05,
    )
    np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-4, atol=1e-4)

    for variable in (query, table):
        fast_gradient = tf.convert_to_tensor(tape.gradient(fast_total, variable))
        explicit_gradient = tf.convert_to_tensor(tape.gradient(explicit_total, variable))
        np.testing.assert_allclose(fast_gradient.numpy(), explicit_gradient.numpy(), atol=1e-3)


def test_keyed_loss_by_hand():
    # Ids [7, 7, 8] with candidates e0 = e0' = [1, 0] (item 7) and [0, 1] (item 8), queries
    # equal to the candidates, Q = [0.5, 0.25, 0.25]. The two item-7 columns differ in Q
    # only. In-batch training rows never do that, but the formula allows it.
    # Row 0 logits: [1 + ln 2, masked, 0 + ln 4]: log(e^(1+ln2) + 4) - (1 + ln 2)
    #   = log(2e + 4) - 1 - ln 2 = log(9.436564) - 1.693147 = 0.551444.
    # Row 1 logits: [masked, 1 + ln 4, ln 4]: log(4e + 4) - 1 - ln 4 = log(14.873127) - 2.386294
    #   = 0.313262.
    # Row 2 logits: [ln 2, ln 4, 1 + ln 4]: log(2 + 4 + 4e) - 1 - ln 4 = log(16.873127)
    #   - 2.386294 = 0.439428.
    vectors = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    values = loss_of(
        vectors,
        vectors,
        [7, 7, 8],
        candidate_sampling_probability=tf.constant([0.5, 0.25, 0.25]),
        one_embedding_per_id=True,
    )
    np.testing.assert_allclose(values, [0.551444, 0.313262, 0.439428], atol=1e-6)


def test_keyed_shared_query_loss(cases_dir):
    query, table, item_ids, arguments = _keyed_arguments(cases_dir)
    ids = tf.constant(item_ids, tf.int64)
    arguments["sampled_embeddings"] = tf.gather(table, arguments["sampled_ids"])
    shared = tf.constant([0.3, -0.2, 0.9])
    for mask in (True, False):
        results = [
            losses.contrastive_losses(
                query,
                tf.gather(table, ids),
                ids,
                remove_accidental_hits=mask,
                shared_query_embedding=shared,
                one_embedding_per_id=one_embedding_per_id,
                **arguments,
            )
            for one_embedding_per_id in (False, True)
        ]
        (general, general_shared), (fast, fast_shared) = results
        np.testing.assert_allclose(fast.numpy(), general.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(
            fast_shared.numpy(), general_shared.numpy(), rtol=1e-5, atol=1e-4
        )


def test_keyed_loss_at_training_scale():
    # 512 rows with Zipf item popularity (the top item fills about a tenth of the batch),
    # 256 sampled negatives from another distribution, unit-norm towers and temperature
    # 0.05 as in training: the fast loss must match the explicit masked softmax.
    rng = np.random.default_rng(7)
    items = 400
    popularity = 1.0 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    sampler = np.full(items, 1.0 / items)
    ids = rng.choice(items, size=512, p=popularity)
    sampled_ids = rng.choice(items, size=256, p=sampler)
    table = rng.normal(size=(items, 16))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    query = rng.normal(size=(512, 16))
    query /= np.linalg.norm(query, axis=1, keepdims=True)

    arguments = {
        "candidate_sampling_probability": tf.constant(popularity[ids], tf.float32),
        "sampled_embeddings": tf.constant(table[sampled_ids], tf.float32),
        "sampled_ids": tf.constant(sampled_ids, tf.int64),
        "sampled_probability": tf.constant(sampler[sampled_ids], tf.float32),
        "temperature": 0.05,
    }
    query = tf.constant(query, tf.float32)
    candidates = tf.constant(table[ids], tf.float32)
    ids = tf.constant(ids, tf.int64)
    fast = losses.contrastive_loss(query, candidates, ids, one_embedding_per_id=True, **arguments)
    explicit = losses.softmax_loss(losses.contrastive_logits(query, candidates, ids, **arguments))
    assert int(tf.reduce_max(tf.unique_with_counts(ids).count)) > 40
    np.testing.assert_allclose(fast.numpy(), explicit.numpy(), rtol=1e-5, atol=1e-4)
