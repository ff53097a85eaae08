"""Typed configuration of the Stage I trainer (contrastive ID pre-training).

The TFX Trainer passes `custom_config` as a JSON-like dict. `Stage1Config.from_dict`
validates it against the fields below, and the resolved config is saved as JSON beside
the model so that every run records the knobs it trained with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from trainer import config_types
from transforms import features

SIMILARITIES = ("cosine", "dot")
NEGATIVE_SAMPLERS = ("uniform", "count_power")
OPTIMIZERS = ("adagrad", "adam", "sgd")
DISTRIBUTIONS = ("auto", "default", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu")
TABLE_BACKENDS = ("auto", "keras", "tpu_embedding")

# Fields that do not change the trained state. They are left out of the fingerprint that
# keys the checkpoint folder, so a rerun that only raises `epochs` or changes the export
# resumes instead of starting over.
_FIELDS_OUTSIDE_FINGERPRINT = frozenset(
    {
        "epochs",
        "eval_batch_size",
        "recall_ks",
        "exclude_train_items",
        "retrieve_top_k",
        "checkpoint_dir",
        "distribution",
        "tpu_address",
    }
)


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    """Knobs of the Stage I two-tower pre-training, with defaults.

    Attributes:
      embedding_dim: Width of every ID embedding table.
      epochs: Passes over the train split's engaged rows, reshuffled each epoch.
      batch_size: Training rows per batch; each row's in-batch negatives are the other rows.
      eval_batch_size: Eval rows scored against the whole item vocabulary at once.
      learning_rate: Learning rate of the optimizer.
      optimizer: "adagrad", "adam" or "sgd". Always the `tf.keras.optimizers.legacy`
        class, because TPUEmbedding rejects the current Keras optimizers.
      similarity: "cosine" scores dot(l2norm(query), l2norm(candidate)) / temperature;
        "dot" scores the plain dot product and ignores `temperature`.
      temperature: Divisor of the cosine score in the training logits.
      num_sampled_negatives: Extra negatives M drawn per batch from the train item
        distribution and shared by every row of the batch; 0 uses in-batch negatives only.
      negative_sampler: "uniform" over the item vocabulary, or "count_power" with
        probability proportional to train count ** `sampler_power`.
      sampler_power: Exponent of the train count for the "count_power" sampler.
      logq_correction: Subtract log(sampling probability) from every candidate's logit.
      remove_accidental_hits: Mask a candidate whose item id equals the row's positive.
      query_id_features: Extra categorical user_* features summed into the query tower.
      candidate_id_features: Extra categorical item_* features summed into the candidate tower.
      unseen_user_loss_weight: Weight w of the unseen-user term. Every training row is also
        scored with the OOV query row, which serving uses for users absent from the
        vocabulary, and w times that loss is added. 0 leaves the OOV row at its random
        initial value.
      recall_ks: Cut-offs K of the eval recall@K.
      exclude_train_items: Remove each user's engaged train items from the eval ranking.
      retrieve_top_k: K of the exported `retrieve` signature.
      shuffle_buffer_size: Rows in the shuffle buffer; at least the number of engaged
        train rows gives a full reshuffle every epoch.
      cache_train_examples: Keep the parsed engaged train rows in memory after epoch 1.
      seed: Seed of the initializers, the shuffles and the negative sampler.
      distribution: "auto" (MirroredStrategy on several GPUs, else the default strategy),
        "default", "mirrored", "multi_worker_mirrored", "parameter_server" or "tpu".
      tpu_address: TPU name or address, read only when `distribution` is "tpu".
      table_backend: "auto" picks the table kind from the strategy; "keras" or
        "tpu_embedding" force one (TPUEmbedding also runs on CPU).
      max_shard_bytes: Largest variable shard under ParameterServerStrategy; larger
        tables are partitioned across parameter servers.
      checkpoint_dir: Stable folder for per-epoch checkpoints. Empty derives one beside the
        Trainer's outputs, keyed by the run's inputs.
    """

    embedding_dim: int = 64
    epochs: int = 20
    batch_size: int = 1024
    eval_batch_size: int = 256
    learning_rate: float = 0.5
    optimizer: str = "adagrad"
    similarity: str = "cosine"
    temperature: float = 0.05
    num_sampled_negatives: int = 0
    negative_sampler: str = "count_power"
    sampler_power: float = 0.75
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    query_id_features: tuple[str, ...] = ()
    candidate_id_features: tuple[str, ...] = ()
    unseen_user_loss_weight: float = 0.5
    recall_ks: tuple[int, ...] = (10, 50, 100)
    exclude_train_items: bool = False
    retrieve_top_k: int = 100
    shuffle_buffer_size: int = 1_000_000
    cache_train_examples: bool = True
    seed: int = 42
    distribution: str = "auto"
    tpu_address: str = ""
    table_backend: str = "auto"
    max_shard_bytes: int = 256 << 20
    checkpoint_dir: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Stage1Config:
        """Build a config from `custom_config`, with defaults for absent keys.

        Args:
          values: Field names to values; None or {} gives the defaults. Lists are accepted
            for tuple fields because JSON has no tuples, and integral floats for counts.

        Returns:
          The validated config.

        Raises:
          ValueError: A key is not a field, or a value has the wrong type or is out of range.
        """
        values = dict(values or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown Stage I config keys {unknown}: valid keys are {sorted(known)}"
            )

        return cls(**config_types.coerce_json_values(cls, values))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serializable dict (tuples become lists)."""
        return {key: _jsonable(value) for key, value in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        """Return the config as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stage1Config:
        """Parse JSON written by `to_json`."""
        return cls.from_dict(json.loads(text))

    def training_fingerprint(self) -> str:
        """Return a hex digest of the fields that change the trained state."""
        relevant = {
            key: value
            for key, value in self.to_dict().items()
            if key not in _FIELDS_OUTSIDE_FINGERPRINT
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Stage I config {name}={value!r} is invalid: use one of {choices}")


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"Stage I config {name}={value!r} is invalid: it must be above 0")


def _validate(config: Stage1Config) -> None:
    config_types.check_field_types(config, "Stage I config")
    _require_choice("similarity", config.similarity, SIMILARITIES)
    _require_choice("negative_sampler", config.negative_sampler, NEGATIVE_SAMPLERS)
    _require_choice("optimizer", config.optimizer, OPTIMIZERS)
    _require_choice("distribution", config.distribution, DISTRIBUTIONS)
    _require_choice("table_backend", config.table_backend, TABLE_BACKENDS)

    for name in (
        "embedding_dim",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "learning_rate",
        "temperature",
        "retrieve_top_k",
        "shuffle_buffer_size",
        "max_shard_bytes",
    ):
        _require_positive(name, getattr(config, name))

    if config.num_sampled_negatives < 0:
        raise ValueError(
            f"Stage I config num_sampled_negatives={config.num_sampled_negatives} is invalid: "
            "use 0 for in-batch negatives only, or a positive count"
        )
    if config.sampler_power < 0:
        raise ValueError(
            f"Stage I config sampler_power={config.sampler_power} is invalid: use 0 or more "
            "(0 samples every item with train engagements alike, 1 by train count)"
        )
    if config.unseen_user_loss_weight < 0:
        raise ValueError(
            f"Stage I config unseen_user_loss_weight={config.unseen_user_loss_weight} is "
            "invalid: use 0 to leave the OOV user row untrained, or a positive weight"
        )
    if not config.recall_ks or any(k <= 0 for k in config.recall_ks):
        raise ValueError(
            f"Stage I config recall_ks={config.recall_ks} is invalid: give positive cut-offs"
        )
    if len(set(config.recall_ks)) != len(config.recall_ks):
        raise ValueError(
            f"Stage I config recall_ks={config.recall_ks} is invalid: give each cut-off once"
        )
    if not 0 <= config.seed < config_types.SEED_LIMIT:
        raise ValueError(
            f"Stage I config seed={config.seed} is invalid: use an integer in [0, 2**32)"
        )
    _validate_side_features(config)


def _validate_side_features(config: Stage1Config) -> None:
    for name, prefix in (("query_id_features", "user_"), ("candidate_id_features", "item_")):
        keys = getattr(config, name)
        wrong = [key for key in keys if not key.startswith(prefix) or key in features.ID_COLUMNS]
        if wrong:
            raise ValueError(
                f"Stage I config {name} has {wrong}: list categorical {prefix}* side "
                f"features other than the ids, which always have their own tables"
            )
