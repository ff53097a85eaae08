"""The Stage II ranker: DCN-v2 over id embeddings and side features, and its training step.

`DcnRanker` maps transformed features to one logit per example. Its input is the
concatenation of the user and item id embeddings (the tables warm-started from Stage I),
an embedding per categorical side feature, the numeric side features and, optionally, an
embedding of the item popularity bucket. DCN-v2 cross layers (`tfrs.layers.dcn.Cross`,
full-rank or low-rank) and a ReLU deep tower are stacked (deep on top of cross) or run in
parallel (outputs concatenated).

`RankerTrainingModel` trains it with binary cross-entropy on the label and Adam, plus an
optional online distillation term from a Platt-scaled Stage I teacher. It keeps the training
machinery (the tables' own optimizer, the teacher) out of the ranker, so the serving export
holds only the ranker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import stage2_config
from trainer.stage2_config import Stage2Config
from transforms import features

USER_INDEX = features.transformed_name(features.USER_ID)
ITEM_INDEX = features.transformed_name(features.ITEM_ID)

# Newton's method fits the logistic regression of the label on the teacher score (two
# parameters) in a few iterations. When the classes are separable, the small ridge keeps the
# slope finite.
PLATT_MAX_ITERATIONS = 100
PLATT_TOLERANCE = 1e-10
PLATT_RIDGE = 1e-6


@dataclasses.dataclass(frozen=True)
class RankerInputs:
    """The transformed features the ranker reads and their sizes.

    Attributes:
      user_vocabulary_size: tokens in the user id vocabulary, OOV rows excluded.
      item_vocabulary_size: tokens in the item id vocabulary, OOV rows excluded.
      categorical_side_features: transformed name -> rows of its embedding (vocabulary
        size plus the OOV rows).
      numeric_side_features: transformed names of the float32 side features.
    """

    user_vocabulary_size: int
    item_vocabulary_size: int
    categorical_side_features: Mapping[str, int] = dataclasses.field(default_factory=dict)
    numeric_side_features: tuple[str, ...] = ()

    @property
    def user_table_rows(self) -> int:
        """Rows of the user id table: one per token plus the OOV rows."""
        return self.user_vocabulary_size + features.NUM_OOV_BUCKETS

    @property
    def item_table_rows(self) -> int:
        """Rows of the item id table: one per token plus the OOV rows."""
        return self.item_vocabulary_size + features.NUM_OOV_BUCKETS

    def feature_keys(self, use_popularity_bucket: bool) -> tuple[str, ...]:
        """Return the transformed feature keys the ranker reads."""
        keys = [USER_INDEX, ITEM_INDEX]
        keys += sorted(self.categorical_side_features)
        keys += list(self.numeric_side_features)
        if use_popularity_bucket:
            keys.append(features.ITEM_POPULARITY_BUCKET)
        return tuple(keys)


def as_batch_vector(tensor: tf.Tensor) -> tf.Tensor:
    """Reshape a per-example scalar feature of shape [B] or [B, 1] to [B]."""
    return tf.reshape(tensor, [-1])


class DcnRanker(tf.keras.Model):
    """DCN-v2 ranker over id embeddings and side features; returns logits of shape [B].

    Args:
      inputs: the transformed features and their sizes.
      config: the Stage II settings (variant, structure, layer sizes, dropout).
      embedding_dim: width of the user and item id tables.
    """

    def __init__(self, inputs: RankerInputs, config: Stage2Config, embedding_dim: int) -> None:
        super().__init__(name="dcn_ranker")
        self.ranker_inputs = inputs
        self.use_popularity_bucket = config.use_popularity_bucket
        self.structure = config.structure
        tables_trainable = config.variant != stage2_config.FROZEN
        initializer = tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=config.seed)

        self.user_table = tf.keras.layers.Embedding(
            inputs.user_table_rows,
            embedding_dim,
            embeddings_initializer=initializer,
            trainable=tables_trainable,
            name=features.USER_ID,
        )
        self.item_table = tf.keras.layers.Embedding(
            inputs.item_table_rows,
            embedding_dim,
            embeddings_initializer=initializer,
            trainable=tables_trainable,
            name=features.ITEM_ID,
        )
        # Frozen tables cannot adapt to the ranking task, so dropout keeps the dense layers
        # from leaning on single embedding coordinates.
        self.id_dropout = None
        if config.variant == stage2_config.FROZEN and config.frozen_embedding_dropout > 0:
            self.id_dropout = tf.keras.layers.Dropout(
                config.frozen_embedding_dropout, seed=config.seed
            )

        self.side_embeddings = {
            key: tf.keras.layers.Embedding(rows, config.side_feature_dim, name=key)
            for key, rows in sorted(inputs.categorical_side_features.items())
        }
        self.popularity_embedding = None
        if config.use_popularity_bucket:
            self.popularity_embedding = tf.keras.layers.Embedding(
                len(features.POPULARITY_BUCKET_NAMES),
                config.side_feature_dim,
                name=features.ITEM_POPULARITY_BUCKET,
            )

        self.cross_layers = [
            tfrs.layers.dcn.Cross(
                projection_dim=config.cross_projection_dim,
                kernel_initializer="glorot_uniform",
                name=f"cross_{index}",
            )
            for index in range(config.cross_layers)
        ]
        self.deep_layers = [
            tf.keras.layers.Dense(size, activation="relu", name=f"deep_{index}")
            for index, size in enumerate(config.deep_layer_sizes)
        ]
        self.logit_layer = tf.keras.layers.Dense(1, name="logit")

    @property
    def id_tables(self) -> list[tf.keras.layers.Embedding]:
        """The user and item id tables, the ones warm-started from Stage I."""
        return [self.user_table, self.item_table]

    @property
    def table_variables(self) -> list[tf.Variable]:
        """The id tables' weight variables."""
        return [table.embeddings for table in self.id_tables]

    def embed(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Return the ranker's input vector x0, shape [B, input width]."""
        user_index = as_batch_vector(inputs[USER_INDEX])
        item_index = as_batch_vector(inputs[ITEM_INDEX])
        ids = tf.concat([self.user_table(user_index), self.item_table(item_index)], axis=1)
        if self.id_dropout is not None:
            ids = self.id_dropout(ids, training=training)

        parts = [ids]
        for key in sorted(self.side_embeddings):
            parts.append(self.side_embeddings[key](as_batch_vector(inputs[key])))
        for key in self.ranker_inputs.numeric_side_features:
            parts.append(tf.reshape(tf.cast(inputs[key], tf.float32), [-1, 1]))
        if self.popularity_embedding is not None:
            bucket = as_batch_vector(inputs[features.ITEM_POPULARITY_BUCKET])
            last_bucket = len(features.POPULARITY_BUCKET_NAMES) - 1
            bucket = tf.clip_by_value(bucket, 0, last_bucket)
            parts.append(self.popularity_embedding(bucket))
        return tf.concat(parts, axis=1)

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        x0 = self.embed(inputs, training=training)

        crossed = x0
        for layer in self.cross_layers:
            crossed = layer(x0, crossed)

        if self.structure == stage2_config.STACKED:
            hidden = crossed
            for layer in self.deep_layers:
                hidden = layer(hidden)
        else:
            deep = x0
            for layer in self.deep_layers:
                deep = layer(deep)
            hidden = tf.concat([crossed, deep], axis=1)

        return tf.reshape(self.logit_layer(hidden), [-1])


def distillation_loss(teacher_probabilities: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy between the teacher's probabilities and the ranker's.

    For teacher probability t and ranker probability p = sigmoid(logit), each example adds
    -(t log p + (1 - t) log(1 - p)); it is computed from the logit for numerical stability.

    Args:
      teacher_probabilities: float32 [B] in [0, 1].
      logits: the ranker's float32 [B] logits.

    Returns:
      A float32 scalar; the caller multiplies it by lambda.
    """
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=teacher_probabilities, logits=logits)
    )


def pair_scores(user_rows: np.ndarray, item_rows: np.ndarray, similarity: str) -> np.ndarray:
    """Return Stage I's score of each (user row, item row) pair: cosine or dot product."""
    if similarity == stage2_config.COSINE:
        user_rows = _normalise_rows(user_rows)
        item_rows = _normalise_rows(item_rows)
    return np.sum(user_rows * item_rows, axis=1)


def fit_platt_scaling(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Fit P(label = 1 | score) = sigmoid(slope * score + intercept) by maximum likelihood.

    Args:
      scores: float [N] teacher scores.
      labels: [N] labels in {0, 1}.

    Returns:
      (slope, intercept).

    Raises:
      ValueError: the scores are empty, or the labels are all one class, which leaves the
        calibration undefined.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    positives = int(labels.sum())
    if scores.size == 0 or positives in (0, scores.size):
        raise ValueError(
            f"Platt scaling needs labels of both classes, got {positives} positive of "
            f"{scores.size} rows: distill only on a train split with label 0 and 1 rows"
        )

    design = np.stack([scores, np.ones_like(scores)], axis=1)
    base_rate = positives / scores.size
    parameters = np.array([0.0, np.log(base_rate / (1.0 - base_rate))])
    for _ in range(PLATT_MAX_ITERATIONS):
        probabilities = 1.0 / (1.0 + np.exp(-(design @ parameters)))
        gradient = design.T @ (probabilities - labels) + PLATT_RIDGE * parameters
        weights = probabilities * (1.0 - probabilities)
        hessian = (design * weights[:, None]).T @ design + PLATT_RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        parameters = parameters - step
        if np.max(np.abs(step)) < PLATT_TOLERANCE:
            break
    return float(parameters[0]), float(parameters[1])


class DistillationTeacher(tf.Module):
    """Stage I's calibrated probability for a (user, item) pair.

    The teacher contains copies of the Stage I tables remapped to Stage II's vocabulary indices
    (tokens new to Stage II get the Stage I OOV row, as Stage I itself would score them), and
    the Platt scaling fitted on the train split.

    Args:
      user_rows: float32 [user table rows, d], in Stage II's user index order.
      item_rows: float32 [item table rows, d], in Stage II's item index order.
      similarity: COSINE or DOT, as Stage I scored pairs.
      slope: Platt slope.
      intercept: Platt intercept.
    """

    def __init__(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        similarity: str,
        slope: float,
        intercept: float,
    ) -> None:
        super().__init__(name="distillation_teacher")
        if similarity == stage2_config.COSINE:
            user_rows = _normalise_rows(user_rows)
            item_rows = _normalise_rows(item_rows)
        self.user_rows = tf.Variable(user_rows, trainable=False, dtype=tf.float32)
        self.item_rows = tf.Variable(item_rows, trainable=False, dtype=tf.float32)
        self.slope = float(slope)
        self.intercept = float(intercept)

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Return the teacher probabilities, float32 [B]."""
        users = tf.gather(self.user_rows, as_batch_vector(inputs[USER_INDEX]))
        items = tf.gather(self.item_rows, as_batch_vector(inputs[ITEM_INDEX]))
        scores = tf.reduce_sum(users * items, axis=1)
        return tf.sigmoid(self.slope * scores + self.intercept)


def _normalise_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


class RankerTrainingModel(tf.keras.Model):
    """Trains a DcnRanker: binary cross-entropy, optional distillation, optional table optimizer.

    Compile it with the dense layers' optimizer. With `table_optimizer` set (the finetune
    variant), the id tables' gradients go to that optimizer instead; otherwise every
    trainable variable uses the compiled optimizer.

    Args:
      ranker: the model to train.
      table_optimizer: optimizer of the id tables, or None.
      teacher: the distillation teacher, or None.
      distillation_weight: lambda of the distillation term.
    """

    def __init__(
        self,
        ranker: DcnRanker,
        table_optimizer: tf.keras.optimizers.Optimizer | None = None,
        teacher: DistillationTeacher | None = None,
        distillation_weight: float = 0.0,
    ) -> None:
        super().__init__(name="ranker_training")
        self.ranker = ranker
        self.table_optimizer = table_optimizer
        self.teacher = teacher
        self.distillation_weight = distillation_weight
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.label_loss_tracker = tf.keras.metrics.Mean(name="label_loss")
        self.distillation_tracker = tf.keras.metrics.Mean(name="distillation_loss")
        self.auc = tf.keras.metrics.AUC(from_logits=True, name="auc")

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        trackers = [self.loss_tracker, self.label_loss_tracker, self.auc]
        if self.teacher is not None:
            trackers.append(self.distillation_tracker)
        return trackers

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.ranker(inputs, training=training)

    def compute_losses(
        self, inputs: Mapping[str, tf.Tensor], labels: tf.Tensor, logits: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Return (total loss, label cross-entropy, distillation cross-entropy) for a batch."""
        labels = tf.cast(as_batch_vector(labels), tf.float32)
        label_loss = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        )
        distill = tf.constant(0.0)
        if self.teacher is not None:
            distill = distillation_loss(self.teacher(inputs), logits)
        total = label_loss + self.distillation_weight * distill
        if self.ranker.losses:
            total += tf.add_n(self.ranker.losses)
        return total, label_loss, distill

    def train_step(self, data):
        inputs, labels = data
        with tf.GradientTape() as tape:
            logits = self.ranker(inputs, training=True)
            total, label_loss, distill = self.compute_losses(inputs, labels, logits)

        variables = self.ranker.trainable_variables
        gradients = tape.gradient(total, variables)
        self._apply_gradients(variables, gradients)
        return self._update_metrics(labels, logits, total, label_loss, distill)

    def test_step(self, data):
        inputs, labels = data
        logits = self.ranker(inputs, training=False)
        total, label_loss, distill = self.compute_losses(inputs, labels, logits)
        return self._update_metrics(labels, logits, total, label_loss, distill)

    def _apply_gradients(self, variables, gradients) -> None:
        if self.table_optimizer is None:
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return

        table_ids = {id(variable) for variable in self.ranker.table_variables}
        dense_pairs = []
        table_pairs = []
        for gradient, variable in zip(gradients, variables, strict=True):
            pairs = table_pairs if id(variable) in table_ids else dense_pairs
            pairs.append((gradient, variable))
        self.optimizer.apply_gradients(dense_pairs)
        self.table_optimizer.apply_gradients(table_pairs)

    def _update_metrics(self, labels, logits, total, label_loss, distill) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(total)
        self.label_loss_tracker.update_state(label_loss)
        self.auc.update_state(tf.cast(as_batch_vector(labels), tf.float32), logits)
        if self.teacher is not None:
            self.distillation_tracker.update_state(distill)
        return {metric.name: metric.result() for metric in self.metrics}


def build_optimizers(
    config: Stage2Config,
) -> tuple[tf.keras.optimizers.Optimizer, tf.keras.optimizers.Optimizer | None]:
    """Return (dense optimizer, table optimizer or None) for the config's variant.

    Only `finetune` has a table optimizer: Adam at learning_rate times
    table_learning_rate_multiplier. `frozen` has no trainable tables, and `full` and `cold`
    train the tables with the dense layers.
    """
    dense = tf.keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.variant != stage2_config.FINETUNE:
        return dense, None
    table_rate = config.learning_rate * config.table_learning_rate_multiplier
    return dense, tf.keras.optimizers.Adam(learning_rate=table_rate)
