"""`create_pipeline`: the one pipeline definition every runner compiles.

The first half, built by `build_first_half`:

  LogIngestion -> StatisticsGen -> SchemaGen (train split) -> SchemaCurator
    -> ExampleValidator (every split, curated schema) -> AnomaliesGate
  LogIngestion + SchemaCurator -> Transform (analyze: train; transform: all splits)
    -> VocabularyCheck

Transform runs only after AnomaliesGate passed (a task dependency, as no
artifact flows between them). The second half, from the Stage I trainer to the
pusher, is built by `tfx_pipeline.training.build_training_half`.
"""

from __future__ import annotations

import dataclasses
import json

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from tfx_pipeline import schema, training
from tfx_pipeline.components import ingestion, vocabulary_check
from tfx_pipeline.config import PipelineConfig
from transforms import features

PREPROCESSING_FN = "transforms.preprocessing.preprocessing_fn"


@dataclasses.dataclass(frozen=True)
class FirstHalf:
    """The components from raw log to checked Transform output, in run order."""

    ingestion: ingestion.LogIngestion
    statistics_gen: tfx.components.StatisticsGen
    schema_gen: tfx.components.SchemaGen
    schema_curator: tfx.types.BaseNode
    example_validator: tfx.components.ExampleValidator
    anomalies_gate: tfx.types.BaseNode
    transform: tfx.components.Transform
    vocabulary_check: tfx.types.BaseNode

    def components(self) -> list[tfx.types.BaseNode]:
        """Return the components in run order."""
        return [getattr(self, field.name) for field in dataclasses.fields(self)]


def build_first_half(
    config: PipelineConfig,
    data_fingerprint: str | None = None,
    data_parameter: tfx.dsl.experimental.RuntimeParameter | None = None,
) -> FirstHalf:
    """Build the components from raw log to checked Transform output.

    Args:
      config: the run's configuration.
      data_fingerprint: `ingestion.data_fingerprint(...)` of the log, so that a cached
        ingestion is reused only while the files are unchanged; None skips it
        (a compiled Kubeflow pipeline, whose data path is a runtime parameter).
      data_parameter: a runtime parameter that replaces `config.data`.

    Returns:
      The components, wired.
    """
    log_ingestion = ingestion.LogIngestion(
        data=data_parameter if data_parameter is not None else config.data,
        data_format=config.data_format,
        split=config.split,
        mapping=config.mapping,
        fingerprint=data_fingerprint,
    )
    examples = log_ingestion.outputs[ingestion.EXAMPLES_KEY]
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"],
        infer_feature_shape=True,
        exclude_splits=[features.EVAL_SPLIT, features.TEST_SPLIT],
    )
    curator = schema.SchemaCurator(inferred_schema=schema_gen.outputs["schema"])
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=curator.outputs["schema"]
    )
    anomalies_gate = schema.AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"], severity=config.anomaly_severity
    )
    transform = tfx.components.Transform(
        examples=examples,
        schema=curator.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=config.preprocessing.to_custom_config(),
        splits_config=tfx.proto.SplitsConfig(
            analyze=[features.TRAIN_SPLIT], transform=list(features.SPLITS)
        ),
    )
    transform.add_upstream_node(anomalies_gate)
    vocabularies = vocabulary_check.VocabularyCheck(
        transform_graph=transform.outputs["transform_graph"],
        preprocessing_config=json.dumps(config.preprocessing.to_custom_config(), sort_keys=True),
    )
    return FirstHalf(
        ingestion=log_ingestion,
        statistics_gen=statistics_gen,
        schema_gen=schema_gen,
        schema_curator=curator,
        example_validator=example_validator,
        anomalies_gate=anomalies_gate,
        transform=transform,
        vocabulary_check=vocabularies,
    )


def create_pipeline(
    config: PipelineConfig,
    *,
    metadata_connection_config: metadata_store_pb2.ConnectionConfig | None = None,
    data_fingerprint: str | None = None,
    pipeline_root: str | None = None,
    serving_dir: str | None = None,
    data_parameter: tfx.dsl.experimental.RuntimeParameter | None = None,
    epochs_parameter: tfx.dsl.experimental.RuntimeParameter | None = None,
) -> tfx.dsl.Pipeline:
    """Return the IDPT pipeline for `config`; every runner compiles this one.

    Args:
      config: the run's configuration (paths, split, vocabularies, trainers, gates).
      metadata_connection_config: ML Metadata connection; None lets the
        orchestrator supply it (Kubeflow).
      data_fingerprint: see `build_first_half`.
      pipeline_root: where artifacts go; None uses `config.pipeline_root`.
      serving_dir: TF Serving model base directory; None uses the training
        config's, or `<dataset dir>/serving`.
      data_parameter, epochs_parameter: runtime parameters (Kubeflow) that
        replace `config.data` and `config.epochs` at run time.

    Returns:
      The pipeline, not yet run.
    """
    first_half = build_first_half(config, data_fingerprint, data_parameter)
    components = first_half.components()
    if not config.first_half_only:
        training_config = config.training
        if serving_dir:
            training_config = dataclasses.replace(training_config, serving_dir=serving_dir)
        components += training.build_training_half(
            training_config,
            first_half,
            config.dataset_dir,
            epochs_parameter if epochs_parameter is not None else config.epochs,
        )
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root or config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_pipeline_args),
    )
