"""Hand-worked checks of exact recall@K: ranks, ties, OOV positives, buckets, exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer import retrieval_metrics as rm

SCORES = tf.constant([[0.9, 0.5, 0.5, 0.1], [0.2, 0.8, 0.3, 0.4]])


def test_rank_counts_ties_against_positive():
    # Row 0: positive item 1 scores 0.5; items 0 (0.9), 1 and 2 (0.5) score >= 0.5: rank 3.
    # Row 1: positive item 3 scores 0.4; items 1 (0.8) and 3 score >= 0.4: rank 2.
    ranks = rm.positive_ranks(SCORES, tf.constant([1, 3])).numpy()
    assert ranks.tolist() == [3, 2]


def test_constant_scores_rank_last():
    # A model that scores every item alike must not look perfect: rank = V = 4.
    ranks = rm.positive_ranks(tf.zeros([2, 4]), tf.constant([0, 2])).numpy()
    assert ranks.tolist() == [4, 4]


def test_excluded_items_leave_ranking_but_positive_stays():
    # Row 0 excludes items 0 and 1 (its own positive): only item 0 leaves, rank 3 -> 2.
    # Row 1 excludes item 1: rank 2 -> 1.
    excluded = tf.constant([[True, True, False, False], [False, True, False, False]])
    ranks = rm.positive_ranks(SCORES, tf.constant([1, 3]), excluded).numpy()
    assert ranks.tolist() == [2, 1]


def test_accumulator_overall_buckets_and_oov():
    accumulator = rm.RecallAccumulator(ks=(1, 2), num_buckets=6)
    # Ranks 3, 2, 1 in buckets 2, 2, 5, and one OOV positive (bucket 0) whose rank is ignored.
    accumulator.update(
        np.array([3, 2, 1, 1]), np.array([2, 2, 5, 0]), np.array([False, False, False, True])
    )
    metrics = accumulator.result()

    assert metrics[rm.EVAL_POSITIVES] == 4
    assert metrics[rm.EVAL_OOV_POSITIVES] == 1
    assert metrics["recall@1"] == pytest.approx(1 / 4)  # only the rank-1 row
    assert metrics["recall@2"] == pytest.approx(2 / 4)  # ranks 2 and 1
    assert metrics["recall@1/popularity_bucket_2"] == 0.0
    assert metrics["recall@2/popularity_bucket_2"] == pytest.approx(1 / 2)
    assert metrics["recall@1/popularity_bucket_5"] == 1.0
    assert metrics["recall@2/popularity_bucket_0"] == 0.0  # the OOV positive is a miss
    assert metrics["recall@2/popularity_bucket_3"] == 0.0  # no positives, reported as 0
    assert metrics["eval_positives/popularity_bucket_2"] == 2
    assert metrics["eval_positives/popularity_bucket_3"] == 0


def test_accumulator_rejects_unknown_bucket():
    accumulator = rm.RecallAccumulator(ks=(1,), num_buckets=6)
    with pytest.raises(ValueError, match=r"^Popularity buckets must lie in \[0, 6\), got \[6\]"):
        accumulator.update(np.array([1]), np.array([6]), np.array([False]))


QUERY = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # users 0, 1 and the OOV row 2
CANDIDATES = tf.constant([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # V = 3 items


def test_evaluate_recall_by_hand():
    # User 0 -> item 0: scores [1, 0.6, 0], rank 1.
    # User 1 -> item 1: scores [0, 0.8, 1], rank 2.
    # OOV user (row 2) -> item 1: scores [0.5, 0.7, 0.5], rank 1.
    # User 0 -> item 3: out of vocabulary, a miss.
    metrics = rm.evaluate_recall(
        QUERY,
        CANDIDATES,
        users=np.array([0, 1, 2, 0]),
        items=np.array([0, 1, 1, 3]),
        buckets=np.array([3, 3, 3, 0]),
        ks=(1, 2),
        batch_size=3,
    )
    assert metrics["recall@1"] == pytest.approx(2 / 4)
    assert metrics["recall@2"] == pytest.approx(3 / 4)
    assert metrics["recall@2/popularity_bucket_3"] == 1.0
    assert metrics[rm.EVAL_OOV_POSITIVES] == 1
    # The OOV user (row 2) is the only new user, at rank 1. Returning users: ranks 1, 2
    # and the OOV item's miss.
    assert metrics["eval_positives/new_users"] == 1
    assert metrics["recall@1/new_users"] == 1.0
    assert metrics["eval_positives/returning_users"] == 3
    assert metrics["recall@1/returning_users"] == pytest.approx(1 / 3)
    assert metrics["recall@2/returning_users"] == pytest.approx(2 / 3)


def test_evaluate_recall_excludes_train_items():
    # User 1 engaged item 2 in train (and an OOV item 3, which is ignored): with item 2
    # removed, user 1's positive item 1 ranks first, so recall@1 rises from 2/4 to 3/4.
    history = rm.train_history(
        np.array([1, 1]), np.array([2, 3]), user_rows=3, item_vocabulary_size=3
    )
    assert history.to_list() == [[], [2], []]
    metrics = rm.evaluate_recall(
        QUERY,
        CANDIDATES,
        users=np.array([0, 1, 2, 0]),
        items=np.array([0, 1, 1, 3]),
        buckets=np.array([3, 3, 3, 0]),
        ks=(1, 2),
        batch_size=2,
        history=history,
    )
    assert metrics["recall@1"] == pytest.approx(3 / 4)
