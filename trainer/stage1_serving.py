"""The Stage I serving SavedModel: query embeddings and brute-force top-K retrieval.

Signatures, on raw string user ids with a batch dimension (`user_id`: string [B]):

  query_embedding  -> query_embedding: float32 [B, D], the query tower output
  retrieve         -> item_ids: string [B, K], scores: float32 [B, K], best first

A score is the dot product of the query embedding with an item's candidate tower output.
With cosine similarity both are L2-normalised, so the score is the cosine, without the
training temperature. `retrieve` scores every in-vocabulary item (brute force) and K is
fixed at export: min(retrieve_top_k, number of items).

Unseen users: a user id absent from the train vocabulary, the empty string included, maps
to the OOV index exactly as Transform maps it, and gets the OOV row's query embedding. Every
unseen id therefore gets the same result. The trainer also scores every training row with
the OOV row (`unseen_user_loss_weight`), so that row learns a ranking for a user the model
knows nothing about instead of keeping its random initial value.

The module holds snapshots of the tower outputs, not the Keras model, so the export is the
same whatever the table kind or distribution strategy that trained it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from transforms import features


class RetrievalServingModule(tf.Module):
    """Lookup of raw user ids plus brute-force scoring over the item vocabulary.

    Args:
      user_tokens_file: Text file of the user vocabulary, one token per line in row order.
      user_vocabulary_size: Number of user tokens V_u; V_u is the OOV index.
      query_matrix: [V_u + 1, D] query tower output per user row, the OOV row last.
      item_tokens: [V_i] item tokens as bytes, in row order.
      candidate_matrix: [V_i, D] candidate tower output per in-vocabulary item.
      top_k: K of `retrieve`; capped at V_i.

    Raises:
      ValueError: The matrices do not match the vocabularies, or NUM_OOV_BUCKETS is not 1.
    """

    def __init__(
        self,
        user_tokens_file: str,
        user_vocabulary_size: int,
        query_matrix: np.ndarray,
        item_tokens: list[bytes],
        candidate_matrix: np.ndarray,
        top_k: int,
    ):
        super().__init__(name="stage1_retrieval")
        _check_shapes(user_vocabulary_size, query_matrix, item_tokens, candidate_matrix)

        self.user_vocabulary = tf.saved_model.Asset(user_tokens_file)
        initializer = tf.lookup.TextFileInitializer(
            self.user_vocabulary,
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.user_index = tf.lookup.StaticHashTable(initializer, default_value=user_vocabulary_size)

        self.query_matrix = tf.Variable(query_matrix.astype(np.float32), trainable=False)
        self.candidate_matrix = tf.Variable(candidate_matrix.astype(np.float32), trainable=False)
        self.item_tokens = tf.Variable(np.array(item_tokens, dtype=object), trainable=False)
        self.top_k = min(top_k, len(item_tokens))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.USER_ID)])
    def query_embedding(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        """Return the query tower output of each user id; unseen ids get the OOV row."""
        rows = self.user_index.lookup(user_id)
        return {features.QUERY_EMBEDDING_OUTPUT: tf.gather(self.query_matrix, rows)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.USER_ID)])
    def retrieve(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        """Return the top K item ids and scores of each user id over all items."""
        query = tf.gather(self.query_matrix, self.user_index.lookup(user_id))
        scores = tf.linalg.matmul(query, self.candidate_matrix, transpose_b=True)
        top = tf.math.top_k(scores, k=self.top_k)
        return {
            features.TOP_ITEM_IDS_OUTPUT: tf.gather(self.item_tokens, top.indices),
            features.TOP_SCORES_OUTPUT: top.values,
        }

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Return the serving signatures by name."""
        return {
            features.QUERY_EMBEDDING_SIGNATURE: self.query_embedding.get_concrete_function(),
            features.RETRIEVE_SIGNATURE: self.retrieve.get_concrete_function(),
        }


def _check_shapes(
    user_vocabulary_size: int,
    query_matrix: np.ndarray,
    item_tokens: list[bytes],
    candidate_matrix: np.ndarray,
) -> None:
    # Transform hashes unseen ids into the OOV buckets; this module maps them all to the
    # first one, which matches Transform only with a single bucket.
    if features.NUM_OOV_BUCKETS != 1:
        raise ValueError(
            f"The Stage I serving model needs NUM_OOV_BUCKETS == 1, got "
            f"{features.NUM_OOV_BUCKETS}: unseen ids would map to other rows than in Transform"
        )
    if query_matrix.shape[0] != user_vocabulary_size + 1:
        raise ValueError(
            f"query_matrix has {query_matrix.shape[0]} rows for {user_vocabulary_size} users: "
            "it needs one per user plus the OOV row"
        )
    if candidate_matrix.shape[0] != len(item_tokens):
        raise ValueError(
            f"candidate_matrix has {candidate_matrix.shape[0]} rows for {len(item_tokens)} "
            "items: it needs one per in-vocabulary item"
        )


def save_serving_model(module: RetrievalServingModule, export_dir: str) -> None:
    """Save the module as a SavedModel with the `query_embedding` and `retrieve` signatures."""
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
