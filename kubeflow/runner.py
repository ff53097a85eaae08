"""Compile the IDPT pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines.

The runner only resolves what differs from a local run (the component image,
the remote pipeline root, runtime parameters) and calls the same
`create_pipeline` as `idpt run`. The orchestrator supplies ML Metadata.
"""

from __future__ import annotations

import dataclasses
import os

from tfx import v1 as tfx

from tfx_pipeline import pipeline as pipeline_lib
from tfx_pipeline.config import PipelineConfig

DATA_PARAMETER = "data-path"
EPOCHS_PARAMETER = "epochs"
DEFAULT_SPEC_FILE = "idpt_pipeline.json"


@dataclasses.dataclass(frozen=True)
class KubeflowTarget:
    """The image and remote paths of a compiled pipeline.

    Attributes:
      image: the component image built from the repository's Dockerfile.
      pipeline_root: a path every component can reach, e.g. gs://bucket/idpt/root.
      serving_dir: the TF Serving model base directory the pusher writes into.
    """

    image: str
    pipeline_root: str
    serving_dir: str


def runtime_parameters(config: PipelineConfig) -> tuple:
    """Return the data path and epochs runtime parameters, defaulting to `config`."""
    data = tfx.dsl.experimental.RuntimeParameter(
        name=DATA_PARAMETER, ptype=str, default=config.data
    )
    epochs = tfx.dsl.experimental.RuntimeParameter(
        name=EPOCHS_PARAMETER, ptype=int, default=config.epochs
    )
    return data, epochs


def compile_pipeline(config: PipelineConfig, target: KubeflowTarget, output_path: str) -> str:
    """Compile the pipeline to a KFP v2 / Vertex AI pipeline spec file.

    Args:
      config: the same configuration `idpt run` takes.
      target: image and remote paths.
      output_path: the JSON spec file to write.

    Returns:
      `output_path`.
    """
    data, epochs = runtime_parameters(config)
    pipeline = pipeline_lib.create_pipeline(
        config,
        pipeline_root=target.pipeline_root,
        serving_dir=target.serving_dir,
        data_parameter=data,
        epochs_parameter=epochs,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=target.image),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path),
    )
    runner.run(pipeline, write_out=True)
    return output_path
