"""Small SavedModels with the served signatures, for tests and benchmarks of the serving path.

The trainers export the real ranking and retrieval models. These stand-ins have the same
signatures, input names, dtypes and output keys (all from `transforms.features`), so the
local server, the client and the warmup records can be exercised without a trained pipeline:

  ranking    predict(user_id, item_id[, numeric side features]) -> {score: float32 [B]}
             serving_default(examples: serialized tf.Example [B]) -> {score: float32 [B]}
  retrieval  retrieve(user_id) -> {item_ids: string [B, K], scores: float32 [B, K]}
             query_embedding(user_id) -> {query_embedding: float32 [B, D]}

Ids are looked up in vocabulary assets named `features.vocabulary_name(key)`, one token per
line, as Transform writes them. An unseen or empty id maps to the OOV row, the last row of
each embedding matrix. The ranking score is `score_scale * dot(user row, item row)` plus
the sum of the numeric side features, so tests can work scores out by hand and tell two
model versions apart by their scale.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from transforms import features


@dataclasses.dataclass(frozen=True)
class StandInSpec:
    """Tables and settings of a stand-in model pair.

    Attributes:
        user_tokens: user vocabulary in row order.
        item_tokens: item vocabulary in row order.
        user_embeddings: float32 (len(user_tokens) + 1, D); the last row is the OOV row.
        item_embeddings: float32 (len(item_tokens) + 1, D); the last row is the OOV row.
        score_scale: multiplies every ranking score and retrieval score.
        top_k: K, the number of items `retrieve` returns per user.
        numeric_side_features: names of extra float32 [B] inputs of `predict`, added to
            the score. `serving_default` reads them from the tf.Example, default 0.
    """

    user_tokens: tuple[str, ...]
    item_tokens: tuple[str, ...]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    score_scale: float = 1.0
    top_k: int = 3
    numeric_side_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        tables = (
            ("user", self.user_tokens, self.user_embeddings),
            ("item", self.item_tokens, self.item_embeddings),
        )
        for side, tokens, embeddings in tables:
            expected_rows = len(tokens) + features.NUM_OOV_BUCKETS
            if embeddings.shape[0] != expected_rows:
                raise ValueError(
                    f"{side}_embeddings has {embeddings.shape[0]} rows, expected "
                    f"{expected_rows}: one per token plus the OOV row"
                )
        if not 1 <= self.top_k <= len(self.item_tokens):
            raise ValueError(
                f"top_k={self.top_k} must be between 1 and the {len(self.item_tokens)} items"
            )


def random_spec(
    num_users: int, num_items: int, dimension: int, *, seed: int = 0, top_k: int = 10
) -> StandInSpec:
    """Return a spec with tokens `u0..`, `i0..` and normal random embeddings."""
    rng = np.random.default_rng(seed)
    return StandInSpec(
        user_tokens=tuple(f"u{i}" for i in range(num_users)),
        item_tokens=tuple(f"i{i}" for i in range(num_items)),
        user_embeddings=rng.normal(size=(num_users + 1, dimension)).astype(np.float32),
        item_embeddings=rng.normal(size=(num_items + 1, dimension)).astype(np.float32),
        top_k=top_k,
    )


def _vocabulary_table(path: str) -> tf.lookup.StaticHashTable:
    # Unseen ids take index V, the OOV row, as Transform's vocabulary with one OOV bucket.
    with open(path, encoding="utf-8") as vocabulary:
        size = sum(1 for _ in vocabulary)
    initializer = tf.lookup.TextFileInitializer(
        path,
        key_dtype=tf.string,
        key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        value_dtype=tf.int64,
        value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return tf.lookup.StaticHashTable(initializer, default_value=size)


def _write_vocabulary(folder: str, key: str, tokens: tuple[str, ...]) -> str:
    for token in tokens:
        if "\n" in token or "\r" in token:
            raise ValueError(f"token {token!r} contains a line break: a text vocabulary cannot")
    path = os.path.join(folder, features.vocabulary_name(key))
    with open(path, "w", encoding="utf-8", newline="\n") as vocabulary:
        vocabulary.writelines(token + "\n" for token in tokens)
    return path


class _Tables(tf.Module):
    """Vocabulary tables and embedding matrices shared by both stand-in models."""

    def __init__(self, spec: StandInSpec, vocabulary_dir: str) -> None:
        super().__init__()
        user_path = _write_vocabulary(vocabulary_dir, features.USER_ID, spec.user_tokens)
        item_path = _write_vocabulary(vocabulary_dir, features.ITEM_ID, spec.item_tokens)
        self.user_table = _vocabulary_table(user_path)
        self.item_table = _vocabulary_table(item_path)
        self.user_embeddings = tf.Variable(spec.user_embeddings, trainable=False)
        self.item_embeddings = tf.Variable(spec.item_embeddings, trainable=False)
        self.item_tokens = tf.constant(list(spec.item_tokens), dtype=tf.string)
        self.score_scale = tf.constant(spec.score_scale, dtype=tf.float32)

    def query_rows(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.user_embeddings, self.user_table.lookup(user_id))

    def candidate_rows(self, item_id: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.item_embeddings, self.item_table.lookup(item_id))


class _RankingModule(_Tables):
    def __init__(self, spec: StandInSpec, vocabulary_dir: str) -> None:
        super().__init__(spec, vocabulary_dir)
        self.side_feature_names = tuple(spec.numeric_side_features)

    @tf.function
    def predict(self, **inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        query = self.query_rows(inputs[features.USER_ID])
        candidate = self.candidate_rows(inputs[features.ITEM_ID])
        score = self.score_scale * tf.reduce_sum(query * candidate, axis=1)
        for name in self.side_feature_names:
            score += inputs[name]
        return {features.SCORE_OUTPUT: score}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        feature_spec = {
            features.USER_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            features.ITEM_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        for name in self.side_feature_names:
            feature_spec[name] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        parsed = tf.io.parse_example(examples, feature_spec)
        return self.predict(**parsed)


class _RetrievalModule(_Tables):
    def __init__(self, spec: StandInSpec, vocabulary_dir: str) -> None:
        super().__init__(spec, vocabulary_dir)
        self.top_k = spec.top_k

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.USER_ID)])
    def retrieve(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        # Scores against every vocabulary item; the OOV item row is never a candidate.
        candidates = self.item_embeddings[: tf.shape(self.item_tokens)[0]]
        logits = self.score_scale * tf.matmul(
            self.query_rows(user_id), candidates, transpose_b=True
        )
        top = tf.math.top_k(logits, k=self.top_k)
        return {
            features.TOP_ITEM_IDS_OUTPUT: tf.gather(self.item_tokens, top.indices),
            features.TOP_SCORES_OUTPUT: top.values,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.USER_ID)])
    def query_embedding(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        return {features.QUERY_EMBEDDING_OUTPUT: self.query_rows(user_id)}


def write_ranking_model(export_dir: str | os.PathLike, spec: StandInSpec) -> pathlib.Path:
    """Save the stand-in ranking model with `predict` and `serving_default` signatures.

    Args:
        export_dir: the version folder to create, e.g. `<base>/ranking/1`.
        spec: tables and settings.

    Returns:
        The export folder.
    """
    with tempfile.TemporaryDirectory() as vocabulary_dir:
        module = _RankingModule(spec, vocabulary_dir)
        input_specs = {
            features.USER_ID: tf.TensorSpec([None], tf.string, name=features.USER_ID),
            features.ITEM_ID: tf.TensorSpec([None], tf.string, name=features.ITEM_ID),
        }
        for name in spec.numeric_side_features:
            input_specs[name] = tf.TensorSpec([None], tf.float32, name=name)
        signatures = {
            features.PREDICT_SIGNATURE: module.predict.get_concrete_function(**input_specs),
            features.SERVING_DEFAULT_SIGNATURE: module.serve_examples.get_concrete_function(),
        }
        tf.saved_model.save(module, os.fspath(export_dir), signatures=signatures)
    return pathlib.Path(export_dir)


def write_retrieval_model(export_dir: str | os.PathLike, spec: StandInSpec) -> pathlib.Path:
    """Save the stand-in retrieval model with `retrieve` and `query_embedding` signatures.

    Args:
        export_dir: the version folder to create, e.g. `<base>/retrieval/1`.
        spec: tables and settings.

    Returns:
        The export folder.
    """
    with tempfile.TemporaryDirectory() as vocabulary_dir:
        module = _RetrievalModule(spec, vocabulary_dir)
        signatures = {
            features.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function(),
            features.QUERY_EMBEDDING_SIGNATURE: module.query_embedding.get_concrete_function(),
        }
        tf.saved_model.save(module, os.fspath(export_dir), signatures=signatures)
    return pathlib.Path(export_dir)
