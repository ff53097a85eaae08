"""Contrastive softmax loss of the Stage I two-tower model.

Each training row is a (query, positive candidate) pair. Row i is scored against every
candidate of the batch (the positives of all rows, so the other rows' positives are its
in-batch negatives) plus M extra negatives sampled for the whole batch. The logits are

    logit[i, j] = score(query_i, candidate_j) / temperature - log(Q_j)

where Q_j is the sampling probability of candidate j: the item's train frequency for an
in-batch candidate, the sampler's probability for a sampled one (mixed negative sampling).
The correction (logQ) applies to every column, the positive included, because popular items
are over-represented as negatives and as positives alike. A candidate other than column i
whose item id equals row i's positive (an accidental hit) gets LARGE_NEGATIVE_LOGIT, so
softmax gives it a probability of exactly 0 in float32.

`contrastive_logits` builds these logits, and `softmax_loss` of them is the reference loss.
Training calls `contrastive_losses`, which computes the same loss with fewer passes over
the [B, B + M] scores.
"""

from __future__ import annotations

import tensorflow as tf

# exp(-1e9 - max_logit) underflows to 0 in float32, so a masked column adds nothing to the
# softmax denominator. A tiny additive epsilon (1e-40) would leave the column unchanged.
LARGE_NEGATIVE_LOGIT = -1e9


def contrastive_logits(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor,
    candidate_sampling_probability: tf.Tensor | None = None,
    sampled_embeddings: tf.Tensor | None = None,
    sampled_ids: tf.Tensor | None = None,
    sampled_probability: tf.Tensor | None = None,
    temperature: float | None = None,
    remove_accidental_hits: bool = True,
) -> tf.Tensor:
    """Compute the logits of each row against in-batch and sampled candidates.

    Args:
      query_embeddings: [B, D] query tower outputs.
      candidate_embeddings: [B, D] candidate tower outputs; row i is row i's positive.
      candidate_ids: [B] int item ids of the positives, for accidental-hit masking.
      candidate_sampling_probability: [B] train frequency of each positive item, all
        above 0; None skips the logQ correction.
      sampled_embeddings: [M, D] candidate tower outputs of the sampled negatives, or None.
      sampled_ids: [M] int item ids of the sampled negatives; required with
        `sampled_embeddings`.
      sampled_probability: [M] the sampler's probability of each sampled item; required
        with `sampled_embeddings` when `candidate_sampling_probability` is given.
      temperature: Divisor of the scores, or None for no scaling.
      remove_accidental_hits: Mask candidates whose id equals the row's positive id.

    Returns:
      [B, B + M] float32 logits; the label of row i is column i.

    Raises:
      ValueError: Sampled embeddings come without their ids or probabilities.
    """
    candidates, ids, probabilities = stack_candidates(
        candidate_embeddings,
        candidate_ids,
        candidate_sampling_probability,
        sampled_embeddings,
        sampled_ids,
        sampled_probability,
    )
    scores = tf.linalg.matmul(query_embeddings, candidates, transpose_b=True)
    return corrected_logits(
        scores, candidate_ids, ids, probabilities, temperature, remove_accidental_hits
    )


def corrected_logits(
    scores: tf.Tensor,
    positive_ids: tf.Tensor,
    candidate_ids: tf.Tensor,
    probabilities: tf.Tensor | None = None,
    temperature: float | None = None,
    remove_accidental_hits: bool = True,
) -> tf.Tensor:
    """Turn raw scores into the loss logits: temperature, logQ, accidental-hit mask.

    Args:
      scores: [B, N] similarity of row i with candidate j; candidate i is row i's positive.
      positive_ids: [B] int item id of each row's positive.
      candidate_ids: [N] int item id of each candidate.
      probabilities: [N] sampling probability of each candidate, or None to skip logQ.
      temperature: Divisor of the scores, or None.
      remove_accidental_hits: Mask candidates j != i whose id equals row i's positive id.

    Returns:
      [B, N] float32 logits.
    """
    logits = scores
    if temperature is not None:
        logits = logits / temperature
    if probabilities is not None:
        logits = logits - tf.math.log(tf.cast(probabilities, logits.dtype))[tf.newaxis, :]
    if remove_accidental_hits:
        logits = _mask_accidental_hits(logits, positive_ids, candidate_ids)
    return logits


def softmax_loss(logits: tf.Tensor) -> tf.Tensor:
    """Return each row's softmax cross-entropy with column i as row i's label: [B]."""
    labels = tf.range(tf.shape(logits)[0])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def shared_query_softmax_loss(
    row_logits: tf.Tensor,
    positive_ids: tf.Tensor,
    candidate_ids: tf.Tensor,
    remove_accidental_hits: bool = True,
) -> tf.Tensor:
    """Compute `softmax_loss` for B rows that share one query, in O(N) instead of O(B * N).

    Every row scores the same candidates with the same query, so the rows' logits differ
    only in which columns accidental-hit masking removes. Row i's log-sum-exp is the
    total over all columns minus the mass of the columns that hold its positive item,
    plus its own column back.

    Args:
      row_logits: [N] logits of the shared query against every candidate, after the
        temperature and the logQ correction; candidate i is row i's positive for i < B.
      positive_ids: [B] int item id of each row's positive.
      candidate_ids: [N] int item id of each candidate.
      remove_accidental_hits: Leave out columns j != i whose id equals row i's positive id.

    Returns:
      [B] float32 losses, equal to `softmax_loss` of the broadcast [B, N] logits after
      `corrected_logits` masking.
    """
    rows = tf.shape(positive_ids)[0]
    peak = tf.stop_gradient(tf.reduce_max(row_logits))
    mass = tf.exp(row_logits - peak)
    positive_logits = row_logits[:rows]
    denominator = tf.reduce_sum(mass)

    if remove_accidental_hits:
        unique_ids, column_item = tf.unique(candidate_ids)
        item_mass = tf.math.unsorted_segment_sum(mass, column_item, tf.size(unique_ids))
        same_item_mass = tf.gather(item_mass, column_item[:rows])
        # The true value is at least the row's own column; the floor absorbs rounding.
        denominator = tf.maximum(denominator - same_item_mass + mass[:rows], mass[:rows])
    return tf.math.log(denominator) + peak - positive_logits


def contrastive_loss(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor,
    **kwargs,
) -> tf.Tensor:
    """Compute each row's softmax cross-entropy against its positive.

    Args:
      query_embeddings: [B, D] query tower outputs.
      candidate_embeddings: [B, D] positives, row i for row i.
      candidate_ids: [B] int item ids of the positives.
      **kwargs: The other arguments of `contrastive_logits`.

    Returns:
      [B] float32 per-row losses, unweighted and unreduced; equal to
      `softmax_loss(contrastive_logits(...))`.
    """
    loss, _ = contrastive_losses(query_embeddings, candidate_embeddings, candidate_ids, **kwargs)
    return loss


def contrastive_losses(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor,
    candidate_sampling_probability: tf.Tensor | None = None,
    sampled_embeddings: tf.Tensor | None = None,
    sampled_ids: tf.Tensor | None = None,
    sampled_probability: tf.Tensor | None = None,
    temperature: float | None = None,
    remove_accidental_hits: bool = True,
    shared_query_embedding: tf.Tensor | None = None,
    one_embedding_per_id: bool = False,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Compute the contrastive loss with few passes over the [B, B + M] logits.

    Elementwise passes over the logits dominated the loss's cost in a CPU profile (batch
    2048, dimension 64). So the temperature scales the [B, D] queries instead, and the logQ
    correction rides in the matmul: queries get a last coordinate -1 and candidates
    log(Q_j). Masking sets the positive's own column aside and adds it back with a
    log-add-exp, which avoids rebuilding the diagonal. With `one_embedding_per_id`,
    masking needs no pass over the logits at all (see `_losses_one_embedding_per_id`).

    Args:
      query_embeddings, candidate_embeddings, candidate_ids, candidate_sampling_probability,
      sampled_embeddings, sampled_ids, sampled_probability, temperature,
      remove_accidental_hits: As for `contrastive_logits`.
      shared_query_embedding: Optional [D] query scored against the same candidates as if
        it were every row's query; its losses come second.
      one_embedding_per_id: The caller promises that candidates with equal ids have equal
        embeddings, in-batch and sampled alike, as when the candidate tower is a function
        of the item id. Masking then subtracts each row's accidental-hit mass in O(B + M)
        instead of masking the [B, B + M] logits. The result equals the masked softmax up
        to float32 rounding, but it is wrong for inputs that break the promise.

    Returns:
      [B] per-row losses, and [B] per-row losses of the shared query (None without it).
    """
    candidates, ids, probabilities = stack_candidates(
        candidate_embeddings,
        candidate_ids,
        candidate_sampling_probability,
        sampled_embeddings,
        sampled_ids,
        sampled_probability,
    )
    # The shared query goes through every step on its own, because joining it to the rows
    # and slicing it off again cost more in a CPU profile than the shared term itself.
    queries = _scale_queries(query_embeddings, temperature, probabilities is not None)
    shared = None
    if shared_query_embedding is not None:
        shared = _scale_queries(
            shared_query_embedding[tf.newaxis, :], temperature, probabilities is not None
        )
    if probabilities is not None:
        log_probability = tf.math.log(tf.cast(probabilities, candidates.dtype))
        candidates = tf.concat([candidates, log_probability[:, tf.newaxis]], axis=1)

    rows = tf.shape(candidate_ids)[0]
    positive_logits = tf.reduce_sum(queries * candidates[:rows], axis=-1)
    if one_embedding_per_id:
        return _losses_one_embedding_per_id(
            queries,
            shared,
            candidates,
            positive_logits,
            candidate_ids,
            ids,
            probabilities,
            remove_accidental_hits,
        )

    logits = tf.linalg.matmul(queries, candidates, transpose_b=True)
    if remove_accidental_hits:
        same_item = tf.equal(candidate_ids[:, tf.newaxis], ids[tf.newaxis, :])
        others = tf.where(same_item, tf.constant(LARGE_NEGATIVE_LOGIT, logits.dtype), logits)
        log_normalizer = tf.math.reduce_logsumexp(others, axis=1)
        log_normalizer = _log_add_exp(log_normalizer, positive_logits)
    else:
        log_normalizer = tf.math.reduce_logsumexp(logits, axis=1)
    loss = log_normalizer - positive_logits

    shared_loss = None
    if shared is not None:
        shared_logits = tf.linalg.matvec(candidates, shared[0])
        shared_loss = shared_query_softmax_loss(
            shared_logits, candidate_ids, ids, remove_accidental_hits
        )
    return loss, shared_loss


def _scale_queries(queries: tf.Tensor, temperature: float | None, logq: bool) -> tf.Tensor:
    """Divide queries by the temperature and, for logQ, append a last coordinate -1.

    With candidates extended by log(Q_j), [q, -1] . [c, log Q] = q . c - log Q, so the
    correction rides in the matmul instead of a pass over the logits.
    """
    if temperature is not None:
        queries = queries / temperature
    if logq:
        queries = tf.concat([queries, -tf.ones_like(queries[:, :1])], axis=1)
    return queries


def _losses_one_embedding_per_id(
    queries: tf.Tensor,
    shared: tf.Tensor | None,
    candidates: tf.Tensor,
    positive_logits: tf.Tensor,
    positive_ids: tf.Tensor,
    candidate_ids: tf.Tensor,
    probabilities: tf.Tensor | None,
    remove_accidental_hits: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Compute the losses when equal ids mean equal embeddings, without masking the logits.

    A column j that contains row i's item then scores the same as row i's own column, apart
    from the logQ term: its mass is the positive's mass times Q_i / Q_j. So the hits of
    row i weigh (Q_i * sum_{j of that item} 1 / Q_j) - 1 times the positive, and one
    segment sum over the candidates gives that factor for every row. Subtracting that mass
    from the row's total loses float32 precision only where the hits outweigh the rest of
    the row by orders of magnitude. A floor keeps the result at least the positive's mass.

    Args:
      queries: [B, D'] queries after `_scale_queries`.
      shared: [1, D'] shared query after `_scale_queries`, or None.
      candidates: [N, D'] candidates, the B positives first, logQ-extended like `queries`.
      positive_logits: [B] corrected logit of each row's own column.
      positive_ids: [B] item id of each row's positive.
      candidate_ids: [N] item id of each candidate.
      probabilities: [N] sampling probability of each candidate, or None without logQ.
      remove_accidental_hits: Leave out each row's hits.

    Returns:
      [B] row losses, and [B] losses of the shared query against each row's positive
      (None without `shared`).
    """
    rows = tf.shape(positive_ids)[0]
    hit_factor = None
    if remove_accidental_hits:
        hit_factor = _hit_factor(positive_ids, candidate_ids, probabilities, candidates.dtype)

    peak, total = _peak_and_total(tf.linalg.matmul(queries, candidates, transpose_b=True))
    loss = _loss_from_total(total, peak, positive_logits, hit_factor)
    if shared is None:
        return loss, None

    shared_peak, shared_total = _peak_and_total(
        tf.linalg.matmul(shared, candidates, transpose_b=True)
    )
    shared_positive_logits = tf.linalg.matvec(candidates[:rows], shared[0])
    shared_loss = _loss_from_total(
        shared_total[0], shared_peak[0], shared_positive_logits, hit_factor
    )
    return loss, shared_loss


def _peak_and_total(logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Return each row's max logit and its sum of exp(logit - max): [R] and [R]."""
    peak = tf.stop_gradient(tf.reduce_max(logits, axis=1))
    return peak, tf.reduce_sum(tf.exp(logits - peak[:, tf.newaxis]), axis=1)


def _hit_factor(
    positive_ids: tf.Tensor,
    candidate_ids: tf.Tensor,
    probabilities: tf.Tensor | None,
    dtype: tf.DType,
) -> tf.Tensor:
    """Return, per row, the mass of its accidental hits in units of its positive's mass: [B]."""
    rows = tf.shape(positive_ids)[0]
    unique_ids, column_item = tf.unique(candidate_ids)
    if probabilities is None:
        inverse_probability = tf.ones(tf.shape(candidate_ids), dtype)
    else:
        inverse_probability = 1.0 / tf.cast(probabilities, dtype)
    item_weight = tf.math.unsorted_segment_sum(
        inverse_probability, column_item, tf.size(unique_ids)
    )
    return tf.gather(item_weight, column_item[:rows]) / inverse_probability[:rows] - 1.0


def _loss_from_total(
    total: tf.Tensor, peak: tf.Tensor, positive_logits: tf.Tensor, hit_factor: tf.Tensor | None
) -> tf.Tensor:
    """Return -log softmax of the positives, given the sum of exp(logit - peak) per row."""
    if hit_factor is None:
        return tf.math.log(total) + peak - positive_logits
    own = tf.exp(positive_logits - peak)
    # The true sum always includes the positive's own column, so the floor only absorbs
    # rounding.
    return tf.math.log(tf.maximum(total - own * hit_factor, own)) + peak - positive_logits


def _log_add_exp(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    larger = tf.maximum(a, b)
    return larger + tf.math.log1p(tf.exp(-tf.abs(a - b)))


def stack_candidates(
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor,
    candidate_sampling_probability: tf.Tensor | None = None,
    sampled_embeddings: tf.Tensor | None = None,
    sampled_ids: tf.Tensor | None = None,
    sampled_probability: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Append the sampled negatives to the in-batch candidates.

    Returns:
      Candidate embeddings [B + M, D], their ids [B + M] and their sampling probabilities
      [B + M] (None without `candidate_sampling_probability`).

    Raises:
      ValueError: Sampled embeddings come without their ids, or without their
        probabilities while the in-batch candidates have theirs.
    """
    if sampled_embeddings is None:
        return candidate_embeddings, candidate_ids, candidate_sampling_probability
    if sampled_ids is None:
        raise ValueError(
            "sampled_ids is None but sampled_embeddings was given: pass the sampled item ids "
            "so that accidental hits among the sampled negatives can be masked"
        )
    if candidate_sampling_probability is not None and sampled_probability is None:
        raise ValueError(
            "sampled_probability is None but candidate_sampling_probability was given: pass "
            "the sampler's probabilities so that the logQ correction covers every candidate"
        )

    candidates = tf.concat([candidate_embeddings, sampled_embeddings], axis=0)
    ids = tf.concat([candidate_ids, tf.cast(sampled_ids, candidate_ids.dtype)], axis=0)
    probabilities = None
    if candidate_sampling_probability is not None:
        probabilities = tf.concat(
            [
                tf.cast(candidate_sampling_probability, tf.float32),
                tf.cast(sampled_probability, tf.float32),
            ],
            axis=0,
        )
    return candidates, ids, probabilities


def _mask_accidental_hits(
    logits: tf.Tensor, positive_ids: tf.Tensor, candidate_ids: tf.Tensor
) -> tf.Tensor:
    # [B, N]: True where column j contains row i's positive item, column i included.
    same_item = tf.equal(positive_ids[:, tf.newaxis], candidate_ids[tf.newaxis, :])
    masked = tf.where(same_item, tf.constant(LARGE_NEGATIVE_LOGIT, logits.dtype), logits)
    # Column i is row i's positive, not an accidental hit: put its logit back.
    return tf.linalg.set_diag(masked, tf.linalg.diag_part(logits))
