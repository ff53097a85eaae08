"""Embedding tables of the two-tower model, created by one factory per distribution strategy.

  TPUStrategy                      -> `tpu_embedding`: `tfrs.layers.embedding.TPUEmbedding`,
                                      sharded over the TPU's embedding cores
  MirroredStrategy,                -> `mirrored`: `tf.keras.layers.Embedding`, one copy
  MultiWorkerMirroredStrategy         per replica
  ParameterServerStrategy          -> `partitioned`: `tf.keras.layers.Embedding`, split by the
                                      strategy's variable partitioner into row shards of at
                                      most `max_shard_bytes`
  default, OneDevice and others    -> `default`: `tf.keras.layers.Embedding`

Every kind looks up a dict of features, `{feature name: [N] int ids}` to
`{feature name: [N, D] embeddings}`, where several features may share one table (the
positives and the sampled negatives share the item table). `table_values` returns a table's
full matrix for evaluation and export, so the exported rows have one format whatever the kind.
Under a TPUStrategy it reads the tables through a checkpoint, because TensorFlow does not
expose TPU-trained tables otherwise.

TPUEmbedding also builds outside a TPUStrategy: it then looks up through
`tf.tpu.experimental.embedding.TPUEmbeddingForServing` with ordinary variables, which keeps
checkpoints compatible with TPU training. That path, like TPU training, needs a
`tf.keras.optimizers.legacy` optimizer (TFRS 0.7.7 raises "New Keras optimizer cannot work
with TPUEmbedding" otherwise), so the Stage I trainer always uses legacy optimizers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import tensorflow as tf

STRATEGY_DEFAULT = "default"
STRATEGY_MIRRORED = "mirrored"
STRATEGY_MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
STRATEGY_PARAMETER_SERVER = "parameter_server"
STRATEGY_TPU = "tpu"

TABLE_KIND_DEFAULT = "default"
TABLE_KIND_MIRRORED = "mirrored"
TABLE_KIND_PARTITIONED = "partitioned"
TABLE_KIND_TPU_EMBEDDING = "tpu_embedding"

BACKEND_AUTO = "auto"
BACKEND_KERAS = "keras"
BACKEND_TPU_EMBEDDING = "tpu_embedding"

_FLOAT32_BYTES = 4


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One embedding table.

    Attributes:
      name: Table name, the raw feature key whose vocabulary indexes the rows.
      rows: Vocabulary size plus the OOV buckets.
      dimension: Embedding width.
    """

    name: str
    rows: int
    dimension: int

    @property
    def size_bytes(self) -> int:
        """Size of the float32 table, without optimizer slots."""
        return self.rows * self.dimension * _FLOAT32_BYTES


def strategy_kind(strategy: tf.distribute.Strategy) -> str:
    """Return the strategy family that decides the table kind.

    Args:
      strategy: Any `tf.distribute.Strategy`, including the default one.

    Returns:
      One of the STRATEGY_* names; strategies not listed there are STRATEGY_DEFAULT.
    """
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return STRATEGY_TPU
    if isinstance(
        strategy,
        (
            tf.distribute.ParameterServerStrategy,
            tf.distribute.experimental.ParameterServerStrategy,
        ),
    ):
        return STRATEGY_PARAMETER_SERVER
    # MultiWorkerMirroredStrategy is checked before MirroredStrategy so that a subclass
    # relation between them, in any TensorFlow version, cannot hide it.
    if isinstance(
        strategy,
        (
            tf.distribute.MultiWorkerMirroredStrategy,
            tf.distribute.experimental.MultiWorkerMirroredStrategy,
        ),
    ):
        return STRATEGY_MULTI_WORKER_MIRRORED
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return STRATEGY_MIRRORED
    return STRATEGY_DEFAULT


def select_table_kind(strategy_name: str, backend: str = BACKEND_AUTO) -> str:
    """Choose the table kind for a strategy family and a requested backend.

    Args:
      strategy_name: A STRATEGY_* name from `strategy_kind`.
      backend: BACKEND_AUTO follows the strategy; BACKEND_KERAS forces Keras tables;
        BACKEND_TPU_EMBEDDING forces TPUEmbedding, which runs under a TPUStrategy or,
        through its serving lookup, under the default strategy.

    Returns:
      One of the TABLE_KIND_* names.

    Raises:
      ValueError: Unknown names, or TPUEmbedding requested under a GPU or parameter
        server strategy.
    """
    if backend not in (BACKEND_AUTO, BACKEND_KERAS, BACKEND_TPU_EMBEDDING):
        raise ValueError(
            f"Unknown table backend {backend!r}: use {BACKEND_AUTO!r}, {BACKEND_KERAS!r} "
            f"or {BACKEND_TPU_EMBEDDING!r}"
        )

    if backend == BACKEND_TPU_EMBEDDING:
        if strategy_name not in (STRATEGY_TPU, STRATEGY_DEFAULT):
            raise ValueError(
                f"The TPUEmbedding table backend runs under a TPUStrategy or the default "
                f"strategy, not under {strategy_name!r}: set table_backend to 'auto'"
            )
        return TABLE_KIND_TPU_EMBEDDING

    by_strategy = {
        STRATEGY_TPU: TABLE_KIND_TPU_EMBEDDING,
        STRATEGY_MIRRORED: TABLE_KIND_MIRRORED,
        STRATEGY_MULTI_WORKER_MIRRORED: TABLE_KIND_MIRRORED,
        STRATEGY_PARAMETER_SERVER: TABLE_KIND_PARTITIONED,
        STRATEGY_DEFAULT: TABLE_KIND_DEFAULT,
    }
    if strategy_name not in by_strategy:
        raise ValueError(f"Unknown strategy family {strategy_name!r}: use one of {by_strategy}")

    kind = by_strategy[strategy_name]
    if backend == BACKEND_KERAS and kind == TABLE_KIND_TPU_EMBEDDING:
        # Keras tables under a TPUStrategy are replicated on every core.
        return TABLE_KIND_MIRRORED
    return kind


def variable_partitioner(max_shard_bytes: int):
    """Return the partitioner to create a ParameterServerStrategy with.

    Variables up to `max_shard_bytes` stay in one piece. A larger table is split along its
    rows into the fewest shards of at most `max_shard_bytes`, which the strategy spreads
    over the parameter servers.

    Args:
      max_shard_bytes: Largest shard, in bytes.

    Returns:
      A `tf.distribute.experimental.partitioners.Partitioner`.
    """
    return tf.distribute.experimental.partitioners.MaxSizePartitioner(max_shard_bytes)


def expected_shards(spec: TableSpec, max_shard_bytes: int) -> int:
    """Return how many row shards `variable_partitioner(max_shard_bytes)` gives a table."""
    rows_per_shard = max(1, max_shard_bytes // (spec.dimension * _FLOAT32_BYTES))
    return min(spec.rows, math.ceil(spec.rows / rows_per_shard))


def create_embedding_tables(
    specs: Sequence[TableSpec],
    feature_tables: Mapping[str, str],
    strategy: tf.distribute.Strategy,
    optimizer: tf.keras.optimizers.legacy.Optimizer,
    backend: str = BACKEND_AUTO,
    max_shard_bytes: int = 256 << 20,
    seed: int = 0,
) -> EmbeddingTables:
    """Create the embedding tables for a distribution strategy.

    Call it under `strategy.scope()`.

    Args:
      specs: The tables, each with a unique name.
      feature_tables: Feature name to table name; a call looks up every feature.
      strategy: The training strategy; it decides the table kind (see the module table).
      optimizer: The legacy Keras optimizer that trains the tables; TPUEmbedding creates
        its slot variables through it.
      backend: See `select_table_kind`.
      max_shard_bytes: Largest shard that ParameterServerStrategy may create; a larger
        table needs a strategy built with `variable_partitioner`.
      seed: Seed of the initializers; table k uses seed + k.

    Returns:
      The tables as one Keras layer.

    Raises:
      ValueError: A feature names an unknown table, or a table needs partitioning that
        the ParameterServerStrategy was not given.
    """
    names = [spec.name for spec in specs]
    unknown = sorted(set(feature_tables.values()) - set(names))
    if unknown:
        raise ValueError(f"Features refer to unknown tables {unknown}: the tables are {names}")

    kind = select_table_kind(strategy_kind(strategy), backend)
    if kind == TABLE_KIND_PARTITIONED:
        _check_partitioner(specs, strategy, max_shard_bytes)
    if kind == TABLE_KIND_TPU_EMBEDDING:
        return TpuEmbeddingTables(specs, feature_tables, optimizer, seed)
    return KerasEmbeddingTables(specs, feature_tables, kind, seed)


def _check_partitioner(
    specs: Sequence[TableSpec], strategy: tf.distribute.Strategy, max_shard_bytes: int
) -> None:
    # ParameterServerStrategy takes its partitioner at construction and exposes it only as
    # this private attribute (TensorFlow 2.21).
    partitioner = getattr(strategy.extended, "_variable_partitioner", None)
    too_big = [spec.name for spec in specs if spec.size_bytes > max_shard_bytes]
    if too_big and partitioner is None:
        raise ValueError(
            f"Tables {too_big} are larger than max_shard_bytes={max_shard_bytes} but the "
            "ParameterServerStrategy has no variable partitioner: create it with "
            "variable_partitioner=trainer.tables.variable_partitioner(max_shard_bytes)"
        )


def _initializer(spec: TableSpec, seed: int) -> tf.keras.initializers.Initializer:
    # Rows of about unit norm, so dot-product and cosine scores start on the same scale.
    return tf.keras.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(spec.dimension), seed=seed)


class EmbeddingTables(tf.keras.layers.Layer):
    """Base of the table kinds: feature lookups plus whole-table reads."""

    def __init__(self, specs: Sequence[TableSpec], feature_tables: Mapping[str, str], kind: str):
        super().__init__(name="embedding_tables")
        self.kind = kind
        self.specs = {spec.name: spec for spec in specs}
        self.feature_tables = dict(feature_tables)

    def create_variables(self) -> None:
        """Create the table variables now, so a checkpoint can restore them before training."""
        for name in self.specs:
            self.table_values(name)

    def table_values(self, name: str) -> tf.Tensor:
        """Return table `name` as a [rows, dimension] float32 tensor."""
        raise NotImplementedError

    def table_variables(self, name: str) -> list[tf.Variable]:
        """Return the variables that hold table `name` (several when partitioned)."""
        raise NotImplementedError


class KerasEmbeddingTables(EmbeddingTables):
    """`tf.keras.layers.Embedding` tables for the default, mirrored and partitioned kinds."""

    def __init__(
        self,
        specs: Sequence[TableSpec],
        feature_tables: Mapping[str, str],
        kind: str,
        seed: int,
    ):
        super().__init__(specs, feature_tables, kind)
        self.embeddings = {
            spec.name: tf.keras.layers.Embedding(
                spec.rows,
                spec.dimension,
                embeddings_initializer=_initializer(spec, seed + index),
                name=spec.name,
            )
            for index, spec in enumerate(specs)
        }

    def call(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            name: self.embeddings[self.feature_tables[name]](ids) for name, ids in features.items()
        }

    def _layer(self, name: str) -> tf.keras.layers.Embedding:
        layer = self.embeddings[name]
        if not layer.built:
            layer(tf.zeros([1], tf.int64))
        return layer

    def table_values(self, name: str) -> tf.Tensor:
        # A ShardedVariable (parameter servers) converts to the concatenation of its shards.
        return tf.convert_to_tensor(self._layer(name).embeddings)

    def table_variables(self, name: str) -> list[tf.Variable]:
        variable = self._layer(name).embeddings
        return list(getattr(variable, "variables", [variable]))


class TpuEmbeddingTables(EmbeddingTables):
    """`tfrs.layers.embedding.TPUEmbedding` tables (TPU, or its serving lookup elsewhere)."""

    def __init__(
        self,
        specs: Sequence[TableSpec],
        feature_tables: Mapping[str, str],
        optimizer: tf.keras.optimizers.legacy.Optimizer,
        seed: int,
    ):
        super().__init__(specs, feature_tables, TABLE_KIND_TPU_EMBEDDING)
        import tensorflow_recommenders as tfrs

        table_configs = {
            spec.name: tf.tpu.experimental.embedding.TableConfig(
                vocabulary_size=spec.rows,
                dim=spec.dimension,
                initializer=_initializer(spec, seed + index),
                name=spec.name,
            )
            for index, spec in enumerate(specs)
        }
        feature_config = {
            feature: tf.tpu.experimental.embedding.FeatureConfig(
                table=table_configs[table], name=feature
            )
            for feature, table in self.feature_tables.items()
        }
        # Kept out of Keras tracking: TableConfig objects are not trackable, and the
        # optimizer belongs to the model.
        self._table_configs = tf.Module()._no_dependency(table_configs)
        self._feature_config = tf.Module()._no_dependency(feature_config)
        self._optimizer = tf.Module()._no_dependency(optimizer)
        self.tpu_embedding = tfrs.layers.embedding.TPUEmbedding(feature_config, optimizer)
        self.on_tpu = strategy_kind(tf.distribute.get_strategy()) == STRATEGY_TPU
        # Where `read_through_checkpoint` writes, or empty for a temporary folder. The trainer
        # sets it under the checkpoint folder, which every TPU host can already reach.
        self.host_copy_dir = ""
        self._host_copy = _HostCopy(step=-1, tables={})

    def call(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # The TPUEmbedding layer needs every configured feature in every call.
        missing = sorted(set(self.feature_tables) - set(features))
        if missing:
            raise ValueError(f"TPUEmbedding lookup is missing features {missing}")
        return self.tpu_embedding(dict(features))

    def _tables(self) -> dict:
        if not self.tpu_embedding.built:
            self.tpu_embedding(
                {feature: tf.zeros([1], tf.int64) for feature in self.feature_tables}
            )
        return self.tpu_embedding.embedding_tables

    def create_variables(self) -> None:
        # Under a TPUStrategy the layer can only run inside `strategy.run`, so its tables
        # appear at the first training step. A checkpoint restore waits for them until then.
        if not self.on_tpu:
            super().create_variables()

    def table_values(self, name: str) -> tf.Tensor:
        # TPUEmbedding keeps a TPU-trained table on the TPU, and TensorFlow refuses to read
        # it outside a save, so the values come through a checkpoint.
        if self.on_tpu:
            step = int(self._optimizer.iterations.numpy())
            if self._host_copy.step != step:
                self._host_copy = _HostCopy(step, self.read_through_checkpoint())
            return self._host_copy.tables[name]
        return tf.convert_to_tensor(self._tables()[self._table_configs[name]])

    def table_variables(self, name: str) -> list[tf.Variable]:
        return [self._tables()[self._table_configs[name]]]

    def read_through_checkpoint(self) -> dict[str, tf.Tensor]:
        """Read every table by saving it and restoring it into a serving-lookup copy.

        This is how `table_values` reads TPU-trained tables, following TensorFlow's advice
        for `TPUEmbedding.embedding_tables`: save, create the object under a CPU strategy,
        restore. It works outside a TPUStrategy too, where the tests run it.

        NOTE: never run on a TPU. The SparseCore embedding of newer TPUs stacks tables in
        its checkpoints, which this copy may not restore.

        Returns:
          Table name to its [rows, dimension] float32 tensor.

        Raises:
          RuntimeError: Called inside a strategy scope, or before the tables exist.
        """
        import tensorflow_recommenders as tfrs

        if tf.distribute.has_strategy():
            raise RuntimeError(
                "Reading TPUEmbedding tables through a checkpoint needs the default "
                f"strategy, but {type(tf.distribute.get_strategy()).__name__} is in scope: "
                "call it outside `strategy.scope()`"
            )
        if not self.tpu_embedding.built:
            raise RuntimeError(
                "The TPUEmbedding tables do not exist yet: under a TPUStrategy they are "
                "created at the first training step"
            )

        with tempfile.TemporaryDirectory(prefix="idpt-tpu-tables-") as scratch:
            directory = self.host_copy_dir or scratch
            path = tf.train.Checkpoint(tables=self.tpu_embedding).write(
                os.path.join(directory, "tables")
            )
            # Outside a TPUStrategy the copy looks up through TPUEmbeddingForServing, with
            # ordinary variables and, without an optimizer, no slots to restore.
            host = tfrs.layers.embedding.TPUEmbedding(self._feature_config, optimizer=None)
            host({feature: tf.zeros([1], tf.int64) for feature in self.feature_tables})
            tf.train.Checkpoint(tables=host).read(path).expect_partial()
            host_tables = host.embedding_tables
            return {
                name: tf.convert_to_tensor(host_tables[config])
                for name, config in self._table_configs.items()
            }


@dataclasses.dataclass(frozen=True)
class _HostCopy:
    # The tables read through a checkpoint, and the optimizer step they were read at.
    step: int
    tables: dict[str, tf.Tensor]


def create_strategy(
    distribution: str, tpu_address: str = "", max_shard_bytes: int = 256 << 20
) -> tf.distribute.Strategy:
    """Create the distribution strategy named in the Stage I config.

    Args:
      distribution: "auto" (MirroredStrategy when TensorFlow lists several GPUs, else the
        default strategy), "default", "mirrored", "multi_worker_mirrored" (cluster from
        TF_CONFIG), "parameter_server" (cluster from TF_CONFIG, tables partitioned by
        `variable_partitioner`) or "tpu".
      tpu_address: TPU name or address for "tpu"; "auto" never looks for a TPU.
      max_shard_bytes: Largest variable shard under "parameter_server".

    Returns:
      The strategy.

    Raises:
      ValueError: Unknown name.
    """
    if distribution == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if distribution == "default":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribution == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if distribution == "parameter_server":
        # NOTE: built as documented for TF 2.21, but never run here: the tests have no
        # parameter server cluster.
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=variable_partitioner(max_shard_bytes)
        )
    if distribution == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown distribution {distribution!r}: use auto, default, mirrored, "
        "multi_worker_mirrored, parameter_server or tpu"
    )
