"""Typed configuration of the Stage II ranker, read from the Trainer's `custom_config`.

The resolved config is written beside the model as JSON, so a pushed model carries the
settings it was trained with. `Stage2Config.from_json(config.to_json())` returns an equal
config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from trainer import config_types

# Stage II variants: how the id embedding tables are initialised and trained.
FROZEN = "frozen"  # warm-started, not trained; dropout on the id embeddings
FINETUNE = "finetune"  # warm-started, trained by their own optimizer at a lower rate
FULL = "full"  # warm-started, trained with the dense layers at one rate
COLD = "cold"  # freshly initialised and trained at one rate: the baseline
VARIANTS = (FROZEN, FINETUNE, FULL, COLD)
WARM_STARTED_VARIANTS = (FROZEN, FINETUNE, FULL)

# Structures: the ways the cross network and the deep tower are combined.
STACKED = "stacked"  # deep tower on top of the cross network's output
PARALLEL = "parallel"  # both read the input; their outputs are concatenated
STRUCTURES = (STACKED, PARALLEL)

# Similarities with which Stage I scored a (user, item) pair, repeated by the teacher.
COSINE = "cosine"  # dot product of L2-normalised embeddings
DOT = "dot"  # plain dot product
TEACHER_SIMILARITIES = (COSINE, DOT)

# Key of the Stage II settings inside a Trainer's `custom_config`.
CUSTOM_CONFIG_KEY = "stage2"


@dataclasses.dataclass
class Stage2Config:
    """Settings of the Stage II DCN-v2 ranker.

    Attributes:
      variant: one of VARIANTS.
      epochs: passes over the train split; the method trains one.
      steps_per_epoch: batches per epoch; None reads the whole train split each epoch.
      eval_steps: eval batches after training; None reads the whole eval split.
      batch_size: training and eval batch size.
      learning_rate: Adam learning rate of the dense layers (and of the tables in `full` and
        `cold`).
      table_learning_rate_multiplier: in `finetune`, the tables' own Adam optimizer runs at
        this multiple of `learning_rate`. Adam divides each step by the gradient's running
        scale, so scaling the gradients instead would leave the step size unchanged.
      frozen_embedding_dropout: in `frozen`, dropout rate on the id embeddings.
      embedding_dim: width of the user and item id tables; None takes the Stage I export's
        width. A warm-started variant raises ValueError when it differs from the export.
      side_feature_dim: width of the embedding of each categorical side feature.
      use_popularity_bucket: add an embedding of the item popularity bucket to the input.
      cross_layers: number of DCN-v2 cross layers.
      cross_projection_dim: rank of the low-rank cross kernel; None uses full-rank kernels.
        The TFRS 0.7.7 `Cross` docstring reports that a rank of a quarter of the input width
        kept the full-rank accuracy in its authors' experiments.
      structure: STACKED or PARALLEL.
      deep_layer_sizes: widths of the ReLU layers of the deep tower.
      distillation_weight: lambda of the online distillation term; 0 turns it off.
      teacher_similarity: how Stage I scored a pair (COSINE or DOT), for the teacher; None
        reads `similarity` from the Stage I model's config file.
      shuffle_buffer: examples in the training shuffle buffer.
      seed: seed of initialisers, dropout and shuffling.
    """

    variant: str = FINETUNE
    epochs: int = 1
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    batch_size: int = 1024
    learning_rate: float = 1e-3
    table_learning_rate_multiplier: float = 0.1
    frozen_embedding_dropout: float = 0.5
    embedding_dim: int | None = None
    side_feature_dim: int = 16
    use_popularity_bucket: bool = False
    cross_layers: int = 2
    cross_projection_dim: int | None = None
    structure: str = STACKED
    deep_layer_sizes: tuple[int, ...] = (256, 128)
    distillation_weight: float = 0.0
    teacher_similarity: str | None = None
    shuffle_buffer: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.deep_layer_sizes, list):
            self.deep_layer_sizes = tuple(self.deep_layer_sizes)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting and its valid values."""
        config_types.check_field_types(self, "Stage II config")
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("structure", self.structure, STRUCTURES)
        if self.teacher_similarity is not None:
            _check_choice("teacher_similarity", self.teacher_similarity, TEACHER_SIMILARITIES)
        _check_at_least("epochs", self.epochs, 1)
        _check_at_least("batch_size", self.batch_size, 1)
        _check_at_least("cross_layers", self.cross_layers, 0)
        _check_at_least("side_feature_dim", self.side_feature_dim, 1)
        for name in ("steps_per_epoch", "eval_steps", "embedding_dim", "cross_projection_dim"):
            value = getattr(self, name)
            if value is not None:
                _check_at_least(name, value, 1)
        for size in self.deep_layer_sizes:
            _check_at_least("deep_layer_sizes entries", size, 1)
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("table_learning_rate_multiplier", self.table_learning_rate_multiplier)
        if not 0.0 <= self.frozen_embedding_dropout < 1.0:
            raise ValueError(
                f"frozen_embedding_dropout={self.frozen_embedding_dropout!r} is invalid: "
                "use a rate in [0, 1)"
            )
        if not 0 <= self.seed < config_types.SEED_LIMIT:
            raise ValueError(f"seed={self.seed!r} is invalid: use an integer in [0, 2**32)")
        if self.distillation_weight < 0.0:
            raise ValueError(
                f"distillation_weight={self.distillation_weight!r} is invalid: "
                "use 0 to turn distillation off or a positive lambda"
            )

    @property
    def warm_started(self) -> bool:
        """True when the id tables start from the Stage I export."""
        return self.variant in WARM_STARTED_VARIANTS

    @property
    def distillation(self) -> bool:
        """True when the loss has the online distillation term."""
        return self.distillation_weight > 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-compatible values (tuples become lists)."""
        values = dataclasses.asdict(self)
        values["deep_layer_sizes"] = list(self.deep_layer_sizes)
        return values

    def to_json(self) -> str:
        """Return the settings as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Stage2Config:
        """Build a config from `values`; absent keys keep their defaults.

        Raises:
          ValueError: a key is not a Stage2Config setting (the message lists the valid
            keys), or a value is invalid.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown Stage II setting(s) {unknown}: valid settings are {sorted(known)}"
            )
        return cls(**config_types.coerce_json_values(cls, values))

    @classmethod
    def from_json(cls, text: str) -> Stage2Config:
        """Parse a config written by `to_json`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_custom_config(cls, custom_config: Mapping[str, Any] | None) -> Stage2Config:
        """Read the Stage II settings from a Trainer's `custom_config`.

        The settings sit under the key CUSTOM_CONFIG_KEY when present, so one
        `custom_config` can carry other settings too; otherwise the whole mapping is read.
        """
        if not custom_config:
            return cls()
        if CUSTOM_CONFIG_KEY in custom_config:
            return cls.from_dict(custom_config[CUSTOM_CONFIG_KEY] or {})
        return cls.from_dict(custom_config)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: use one of {list(choices)}")


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: use an integer >= {minimum}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0.0:
        raise ValueError(f"{name}={value!r} is invalid: use a number > 0")
