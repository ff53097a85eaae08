"""Exact recall@K of a two-tower model over the whole item vocabulary.

For each eval row with label 1, the user's query embedding scores every in-vocabulary item
(brute force). The positive's rank is the number of candidate items whose score is at least
the positive's own score, so ties count against the positive and a constant model scores
recall 0, not 1. The row is a hit at K when its rank is at most K. An eval positive whose
item is out of vocabulary (Transform's OOV index) cannot be ranked: it counts as a miss and
is also counted separately. Items the user engaged with in train stay candidates unless
excluded; when excluded, the row's own positive always stays.

Recall is reported overall, per item popularity bucket (`features.popularity_bucket`) and
for new and returning users, with the number of positives behind each figure:

  recall@K                          hits within K / eval positives (OOV positives included)
  recall@K/popularity_bucket_<b>    the same over the positives whose item is in bucket b
  recall@K/new_users                the same over users absent from the user vocabulary,
                                    who all get the OOV query row
  recall@K/returning_users          the same over users in the user vocabulary
  eval_positives, eval_oov_positives, eval_positives/popularity_bucket_<b>,
  eval_positives/new_users, eval_positives/returning_users

Bucket b is the index into `features.POPULARITY_BUCKET_NAMES` ("0", "1", "2-4", ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from transforms import features

EVAL_POSITIVES = "eval_positives"
EVAL_OOV_POSITIVES = "eval_oov_positives"
NEW_USERS = "new_users"
RETURNING_USERS = "returning_users"
_BUCKET_SLICE = "popularity_bucket_{bucket}"


def recall_metric_name(k: int, bucket: int | None = None, users: str | None = None) -> str:
    """Return the metric key of recall@k: overall, for a popularity bucket or a user group.

    Args:
      k: The cut-off.
      bucket: A popularity bucket index, or None.
      users: NEW_USERS, RETURNING_USERS or None.
    """
    return f"recall@{k}" + _slice_suffix(bucket, users)


def positives_metric_name(bucket: int | None = None, users: str | None = None) -> str:
    """Return the metric key of the number of eval positives in a bucket or user group."""
    return EVAL_POSITIVES + _slice_suffix(bucket, users)


def _slice_suffix(bucket: int | None, users: str | None) -> str:
    if bucket is not None:
        return "/" + _BUCKET_SLICE.format(bucket=bucket)
    if users is not None:
        return "/" + users
    return ""


def positive_ranks(
    scores: tf.Tensor, positive_ids: tf.Tensor, excluded: tf.Tensor | None = None
) -> tf.Tensor:
    """Rank each row's positive among the in-vocabulary candidates.

    Args:
      scores: [B, V] scores of every in-vocabulary item.
      positive_ids: [B] in-vocabulary item index of each row's positive (< V).
      excluded: Optional [B, V] bool, True for items removed from the ranking; the
        positive is never removed.

    Returns:
      [B] int64 ranks from 1 (best) to V: the number of candidates scoring at least the
      positive's score, the positive included.
    """
    positive_ids = tf.cast(positive_ids, tf.int64)
    positive_scores = tf.gather(scores, positive_ids, axis=1, batch_dims=1)
    competing = scores >= positive_scores[:, tf.newaxis]

    if excluded is not None:
        is_positive = tf.one_hot(positive_ids, tf.shape(scores)[1], on_value=True, off_value=False)
        removed = tf.logical_and(excluded, tf.logical_not(is_positive))
        competing = tf.logical_and(competing, tf.logical_not(removed))
    return tf.reduce_sum(tf.cast(competing, tf.int64), axis=1)


class RecallAccumulator:
    """Sums hits and positives over eval batches, overall and per popularity bucket.

    Args:
      ks: The cut-offs K.
      num_buckets: Number of popularity buckets.
    """

    def __init__(self, ks: Sequence[int], num_buckets: int = len(features.POPULARITY_BUCKET_NAMES)):
        self.ks = tuple(ks)
        self.num_buckets = num_buckets
        self.positives = np.zeros(num_buckets, np.int64)
        self.oov_positives = 0
        self.hits = {k: np.zeros(num_buckets, np.int64) for k in self.ks}
        # Index 0: returning users, 1: new users.
        self.user_positives = np.zeros(2, np.int64)
        self.user_hits = {k: np.zeros(2, np.int64) for k in self.ks}

    def update(
        self,
        ranks: np.ndarray,
        buckets: np.ndarray,
        is_oov: np.ndarray,
        is_new_user: np.ndarray | None = None,
    ) -> None:
        """Add a batch of eval positives.

        Args:
          ranks: [B] ranks from `positive_ranks`; ignored where `is_oov`.
          buckets: [B] popularity bucket of each positive's item.
          is_oov: [B] bool, True where the positive's item is out of vocabulary.
          is_new_user: [B] bool, True where the user is absent from the user vocabulary;
            None counts every user as returning.

        Raises:
          ValueError: A bucket is outside [0, num_buckets).
        """
        buckets = np.asarray(buckets, np.int64)
        if buckets.size and (buckets.min() < 0 or buckets.max() >= self.num_buckets):
            raise ValueError(
                f"Popularity buckets must lie in [0, {self.num_buckets}), got "
                f"{sorted(set(buckets.tolist()))}"
            )
        is_oov = np.asarray(is_oov, bool)
        groups = np.zeros(len(buckets), np.int64)
        if is_new_user is not None:
            groups = np.asarray(is_new_user, np.int64)
        self.positives += np.bincount(buckets, minlength=self.num_buckets)
        self.user_positives += np.bincount(groups, minlength=2)
        self.oov_positives += int(is_oov.sum())

        for k in self.ks:
            hit = np.logical_and(~is_oov, np.asarray(ranks) <= k)
            self.hits[k] += np.bincount(buckets[hit], minlength=self.num_buckets)
            self.user_hits[k] += np.bincount(groups[hit], minlength=2)

    def result(self) -> dict[str, float | int]:
        """Return recall@K overall, per bucket and per user group, plus the positive counts.

        A slice without positives reports recall 0.0 next to its count of 0.
        """
        total = int(self.positives.sum())
        metrics: dict[str, float | int] = {
            EVAL_POSITIVES: total,
            EVAL_OOV_POSITIVES: self.oov_positives,
        }
        for k in self.ks:
            metrics[recall_metric_name(k)] = _ratio(self.hits[k].sum(), total)
            for bucket in range(self.num_buckets):
                metrics[recall_metric_name(k, bucket)] = _ratio(
                    self.hits[k][bucket], self.positives[bucket]
                )
            for group, users in enumerate((RETURNING_USERS, NEW_USERS)):
                metrics[recall_metric_name(k, users=users)] = _ratio(
                    self.user_hits[k][group], self.user_positives[group]
                )
        for bucket in range(self.num_buckets):
            metrics[positives_metric_name(bucket)] = int(self.positives[bucket])
        for group, users in enumerate((RETURNING_USERS, NEW_USERS)):
            metrics[positives_metric_name(users=users)] = int(self.user_positives[group])
        return metrics


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def train_history(
    users: np.ndarray, items: np.ndarray, user_rows: int, item_vocabulary_size: int
) -> tf.RaggedTensor:
    """Group engaged train items by user: row u lists the in-vocabulary items user u engaged with.

    Args:
      users: [N] user index of each engaged train row.
      items: [N] item index of the same rows; OOV items (V or more) are left out.
      user_rows: Rows of the user table (vocabulary plus OOV).
      item_vocabulary_size: V of the item vocabulary.

    Returns:
      A [user_rows, None] int64 ragged tensor.
    """
    keep = items < item_vocabulary_size
    users, items = users[keep], items[keep]
    order = np.argsort(users, kind="stable")
    lengths = np.bincount(users[order], minlength=user_rows)
    return tf.RaggedTensor.from_row_lengths(items[order].astype(np.int64), lengths)


def evaluate_recall(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    users: np.ndarray,
    items: np.ndarray,
    buckets: np.ndarray,
    ks: Sequence[int],
    batch_size: int = 256,
    history: tf.RaggedTensor | None = None,
) -> dict[str, float | int]:
    """Compute exact recall@K of eval positives against every in-vocabulary item.

    Args:
      query_embeddings: [user rows, D] query tower output per user index, the OOV rows
        last; users at the OOV rows count as new users.
      candidate_embeddings: [V, D] candidate tower output of the in-vocabulary items.
      users: [N] user index of each eval positive (the OOV index for unseen users).
      items: [N] item index of each eval positive; V or more is out of vocabulary.
      buckets: [N] popularity bucket of each positive's item.
      ks: Cut-offs K.
      batch_size: Eval rows scored at once ([batch_size, V] scores in memory).
      history: Optional output of `train_history`; its items are excluded from each user's
        ranking (the positive excepted).

    Returns:
      The metrics described in the module docstring.
    """
    accumulator = RecallAccumulator(ks)
    vocabulary_size = int(candidate_embeddings.shape[0])
    user_oov_index = int(query_embeddings.shape[0]) - features.NUM_OOV_BUCKETS

    for start in range(0, len(users), batch_size):
        batch_users = users[start : start + batch_size]
        batch_items = items[start : start + batch_size]
        is_oov = batch_items >= vocabulary_size
        # OOV positives get a placeholder id; their ranks are ignored.
        ranked_items = np.where(is_oov, 0, batch_items)

        scores = tf.linalg.matmul(
            tf.gather(query_embeddings, batch_users), candidate_embeddings, transpose_b=True
        )
        excluded = None
        if history is not None:
            excluded = _history_mask(history, batch_users, vocabulary_size)
        ranks = positive_ranks(scores, ranked_items, excluded).numpy()
        accumulator.update(
            ranks, buckets[start : start + batch_size], is_oov, batch_users >= user_oov_index
        )
    return accumulator.result()


def _history_mask(history: tf.RaggedTensor, users: np.ndarray, vocabulary_size: int) -> tf.Tensor:
    rows = tf.gather(history, users)
    coordinates = tf.stack([rows.value_rowids(), rows.flat_values], axis=1)
    shape = tf.constant([len(users), vocabulary_size], tf.int64)
    counts = tf.scatter_nd(coordinates, tf.ones_like(rows.flat_values), shape)
    return counts > 0
