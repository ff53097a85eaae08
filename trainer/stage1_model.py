"""The Stage I surrogate model: two ID towers trained with a contrastive loss.

The query tower sums the embeddings of the user id and of the configured user side
features, and the candidate tower does the same for the item. With cosine similarity both
tower outputs are L2-normalised, so a logit is cos(query, candidate) / temperature. With dot
similarity they are used as they are. Side features are looked up from the id through a
per-id index built from the train split, so a tower is a function of the id alone, in
training and at serving.

A training row is an engaged (user, item) pair from the train split. Its loss is the softmax
cross-entropy of its positive against the batch's positives and M sampled negatives (see
`trainer.losses`), weighted by the row's `weight`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from trainer import losses, tables
from trainer.config import Stage1Config
from trainer.stage1_data import ITEM_IDS, USER_IDS, Vocabulary
from transforms import features

SAMPLED_FEATURE_PREFIX = "sampled_"
UNSEEN_FEATURE_PREFIX = "unseen_"


def make_optimizer(config: Stage1Config) -> tf.keras.optimizers.legacy.Optimizer:
    """Create the legacy Keras optimizer named by the config.

    Legacy optimizers are the ones TPUEmbedding accepts, so one optimizer class trains the
    tables whatever the table kind.
    """
    classes = {
        "adagrad": tf.keras.optimizers.legacy.Adagrad,
        "adam": tf.keras.optimizers.legacy.Adam,
        "sgd": tf.keras.optimizers.legacy.SGD,
    }
    return classes[config.optimizer](learning_rate=config.learning_rate)


def sampler_probabilities(config: Stage1Config, item_counts: np.ndarray) -> np.ndarray:
    """Return the negative sampler's probability of each in-vocabulary item.

    Args:
      config: Reads `negative_sampler` and `sampler_power`.
      item_counts: [V] engaged train count per item, in vocabulary order.

    Returns:
      [V] float64 probabilities summing to 1.
    """
    if config.negative_sampler == "uniform":
        return np.full(len(item_counts), 1.0 / len(item_counts))
    counts = item_counts.astype(np.float64)
    # Items without train engagements are never sampled, also at power 0, where 0 ** 0 = 1.
    weights = np.where(counts > 0, np.power(counts, config.sampler_power), 0.0)
    return weights / weights.sum()


class Stage1Model(tf.keras.Model):
    """Two ID towers with a contrastive in-batch plus sampled-negatives loss.

    Args:
      config: The Stage I config.
      vocabularies: Vocabulary per raw key: `user_id`, `item_id` and each side feature.
      side_feature_index: Side feature key to its [id rows] int64 index per id (see
        `stage1_data.side_feature_index`).
      item_counts: [V] engaged train count per item, for the negative sampler.
      strategy: The distribution strategy the model is created under.
    """

    def __init__(
        self,
        config: Stage1Config,
        vocabularies: Mapping[str, Vocabulary],
        side_feature_index: Mapping[str, np.ndarray],
        item_counts: np.ndarray,
        strategy: tf.distribute.Strategy,
        optimizer: tf.keras.optimizers.legacy.Optimizer,
    ):
        super().__init__(name="stage1_two_tower")
        self.config = config
        self.vocabularies = dict(vocabularies)
        self.query_keys = (features.USER_ID, *config.query_id_features)
        self.candidate_keys = (features.ITEM_ID, *config.candidate_id_features)

        self._side_index = {
            key: tf.constant(index, tf.int64) for key, index in side_feature_index.items()
        }
        probabilities = sampler_probabilities(config, item_counts)
        self._sampler_probability = tf.constant(probabilities, tf.float32)
        cdf = np.cumsum(probabilities)
        cdf[-1] = 1.0
        self._sampler_cdf = tf.constant(cdf, tf.float64)

        self.tables = tables.create_embedding_tables(
            self._table_specs(),
            self._feature_tables(),
            strategy,
            optimizer,
            backend=config.table_backend,
            max_shard_bytes=config.max_shard_bytes,
            seed=config.seed,
        )
        self.random = tf.random.Generator.from_seed(config.seed)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def _table_specs(self) -> list[tables.TableSpec]:
        keys = (*self.query_keys, *self.candidate_keys)
        return [
            tables.TableSpec(key, self.vocabularies[key].rows, self.config.embedding_dim)
            for key in keys
        ]

    def _feature_tables(self) -> dict[str, str]:
        mapping = {key: key for key in (*self.query_keys, *self.candidate_keys)}
        if self.config.num_sampled_negatives:
            for key in self.candidate_keys:
                mapping[SAMPLED_FEATURE_PREFIX + key] = key
        if self.config.unseen_user_loss_weight:
            for key in self.query_keys:
                mapping[UNSEEN_FEATURE_PREFIX + key] = key
        return mapping

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return [self.loss_tracker]

    def _lookup_ids(self, user_ids: tf.Tensor, item_ids: tf.Tensor, sampled_ids) -> dict:
        ids = {features.USER_ID: user_ids, features.ITEM_ID: item_ids}
        for key in self.query_keys[1:]:
            ids[key] = tf.gather(self._side_index[key], user_ids)
        for key in self.candidate_keys[1:]:
            ids[key] = tf.gather(self._side_index[key], item_ids)
        if sampled_ids is not None:
            ids[SAMPLED_FEATURE_PREFIX + features.ITEM_ID] = sampled_ids
            for key in self.candidate_keys[1:]:
                ids[SAMPLED_FEATURE_PREFIX + key] = tf.gather(self._side_index[key], sampled_ids)
        if self.config.unseen_user_loss_weight:
            oov = tf.constant([self.vocabularies[features.USER_ID].oov_index], tf.int64)
            ids[UNSEEN_FEATURE_PREFIX + features.USER_ID] = oov
            for key in self.query_keys[1:]:
                ids[UNSEEN_FEATURE_PREFIX + key] = tf.gather(self._side_index[key], oov)
        return ids

    def _finish_tower(self, summed: tf.Tensor) -> tf.Tensor:
        if self.config.similarity == "cosine":
            return tf.math.l2_normalize(summed, axis=-1)
        return summed

    def _tower(self, looked_up: Mapping[str, tf.Tensor], prefix: str, keys) -> tf.Tensor:
        return self._finish_tower(tf.add_n([looked_up[prefix + key] for key in keys]))

    def embed(
        self, user_ids: tf.Tensor, item_ids: tf.Tensor, sampled_ids: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """Run both towers; one table lookup serves all features (TPUEmbedding needs that).

        Args:
          user_ids: [B] user vocabulary indices.
          item_ids: [B] item vocabulary indices.
          sampled_ids: [M] sampled item indices, or None.

        Returns:
          Query [B, D], candidate [B, D], sampled candidate [M, D] (or None) embeddings,
          and the OOV user's query [1, D] (None when `unseen_user_loss_weight` is 0). The
          OOV row is a feature of its own, not one more row of the batch, so the batch's
          tensors are never joined and split.
        """
        looked_up = self.tables(self._lookup_ids(user_ids, item_ids, sampled_ids))
        query = self._tower(looked_up, "", self.query_keys)
        candidate = self._tower(looked_up, "", self.candidate_keys)

        sampled = unseen = None
        if sampled_ids is not None:
            sampled = self._tower(looked_up, SAMPLED_FEATURE_PREFIX, self.candidate_keys)
        if self.config.unseen_user_loss_weight:
            unseen = self._tower(looked_up, UNSEEN_FEATURE_PREFIX, self.query_keys)
        return query, candidate, sampled, unseen

    def sample_negatives(self) -> tuple[tf.Tensor, tf.Tensor] | tuple[None, None]:
        """Draw M item indices with replacement from the sampler.

        Returns:
          [M] int64 item indices and [M] float32 sampler probabilities, or (None, None)
          when M is 0.
        """
        count = self.config.num_sampled_negatives
        if not count:
            return None, None
        uniform = self.random.uniform([count], dtype=tf.float64)
        ids = tf.searchsorted(self._sampler_cdf, uniform, side="right", out_type=tf.int64)
        ids = tf.minimum(ids, tf.size(self._sampler_cdf, out_type=tf.int64) - 1)
        return ids, tf.gather(self._sampler_probability, ids)

    def per_example_loss(self, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Return the [B] unweighted contrastive loss of a batch of engaged rows.

        With `unseen_user_loss_weight` w above 0, each row also counts as a row of an unseen
        user: the OOV query row scores the same candidates, and w times that row's loss is
        added. Serving uses the OOV row for every user absent from the vocabulary, so this
        term teaches it a ranking for a user the model has no data on.
        """
        item_ids = batch[ITEM_IDS]
        sampled_ids, sampled_probability = self.sample_negatives()
        query, candidate, sampled, unseen = self.embed(batch[USER_IDS], item_ids, sampled_ids)
        logq = self.config.logq_correction
        loss, unseen_loss = losses.contrastive_losses(
            query,
            candidate,
            item_ids,
            candidate_sampling_probability=(
                batch[features.ITEM_SAMPLING_PROBABILITY] if logq else None
            ),
            sampled_embeddings=sampled,
            sampled_ids=sampled_ids,
            sampled_probability=sampled_probability if logq else None,
            temperature=self.config.temperature if self.config.similarity == "cosine" else None,
            remove_accidental_hits=self.config.remove_accidental_hits,
            shared_query_embedding=None if unseen is None else unseen[0],
            # The candidate tower reads only the item id (side features come from a per-id
            # index), so equal ids mean equal embeddings.
            one_embedding_per_id=True,
        )
        if unseen is not None:
            loss += self.config.unseen_user_loss_weight * unseen_loss
        return loss

    def train_step(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        weights = tf.cast(batch[features.WEIGHT], tf.float32)
        with tf.GradientTape() as tape:
            per_example = self.per_example_loss(batch)
            # Divides by the global batch size, so replicas' gradients sum to the mean.
            loss = tf.nn.compute_average_loss(per_example * weights)

        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        self.loss_tracker.update_state(per_example, sample_weight=weights)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # The eval loss is the training objective, sampled negatives and the unseen-user
        # term included, so with M > 0 it varies with the sampler's draws.
        weights = tf.cast(batch[features.WEIGHT], tf.float32)
        per_example = self.per_example_loss(batch)
        self.loss_tracker.update_state(per_example, sample_weight=weights)
        return {"loss": self.loss_tracker.result()}

    def build_tables(self) -> None:
        """Create the table variables, so a checkpoint can restore them before training."""
        self.tables.create_variables()

    def _tower_matrix(self, id_key: str, side_keys: tuple[str, ...]) -> tf.Tensor:
        summed = self.tables.table_values(id_key)
        for key in side_keys:
            summed = summed + tf.gather(self.tables.table_values(key), self._side_index[key])
        return self._finish_tower(summed)

    def query_matrix(self) -> tf.Tensor:
        """Return the query tower output of every user row, the OOV row last: [V_u + 1, D]."""
        return self._tower_matrix(features.USER_ID, self.query_keys[1:])

    def candidate_matrix(self) -> tf.Tensor:
        """Return the candidate tower output of every item row, the OOV row last: [V_i + 1, D]."""
        return self._tower_matrix(features.ITEM_ID, self.candidate_keys[1:])
