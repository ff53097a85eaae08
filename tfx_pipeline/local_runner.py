"""Run the pipeline locally with LocalDagRunner and a SQLite ML Metadata store.

Layout under `PipelineConfig.output_dir`, one folder per dataset:

  <output_dir>/<dataset>/pipeline/        component outputs (artifacts)
  <output_dir>/<dataset>/metadata/        metadata.sqlite (ML Metadata)
  <output_dir>/<dataset>/logs/            the full log of each run

Caching is on, so a rerun reuses every component whose inputs and parameters are
unchanged (after a crash, the finished ones).
"""

from __future__ import annotations

import datetime
import logging as std_logging
import os
import re
import sys

from absl import logging
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration import metadata

from tfx_pipeline import pipeline as pipeline_lib
from tfx_pipeline.components import ingestion
from tfx_pipeline.config import PipelineConfig

# LocalDagRunner and the launcher log these at INFO; the console shows only them,
# IDPT's own log lines, and errors.
_PROGRESS = re.compile(r"^(Component \S+ is (running|finished)|A cached execution \d+ is used)")
_IDPT_MODULES = ("tfx_pipeline", "transforms", "trainer", "serving")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"
_CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def metadata_connection_config(config: PipelineConfig) -> metadata_store_pb2.ConnectionConfig:
    """Return the SQLite ML Metadata connection of the config's dataset folder."""
    return metadata.sqlite_metadata_connection_config(config.metadata_path)


def run(config: PipelineConfig) -> None:
    """Run the pipeline for `config` to completion.

    Args:
      config: the run's configuration.

    Raises:
      Whatever a component raises (e.g. ingestion.EmptySplitError), after the
      orchestrator has recorded the failed execution.
    """
    os.makedirs(config.dataset_dir, exist_ok=True)
    logging.info(
        "IDPT run of %s (%s); outputs under %s.",
        config.data,
        config.data_format,
        config.dataset_dir,
    )
    pipeline = pipeline_lib.create_pipeline(
        config,
        metadata_connection_config=metadata_connection_config(config),
        data_fingerprint=ingestion.data_fingerprint(config.data, config.data_format),
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    logging.info("IDPT run finished.")


def configure_logging(config: PipelineConfig) -> str:
    """Send the full log to a new file under the dataset folder, progress lines to stderr.

    The console shows components starting and finishing, cache hits, IDPT's own
    log lines and errors. Call it once per process, before `run`.

    Returns:
      The path of the log file.
    """
    log_dir = os.path.join(config.dataset_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = os.path.join(log_dir, f"run-{stamp}.log")

    file_handler = std_logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(std_logging.Formatter(_FILE_FORMAT))
    console_handler = std_logging.StreamHandler(sys.stderr)
    console_handler.setFormatter(std_logging.Formatter(_CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    console_handler.addFilter(_console_filter)

    # Libraries install their own console handlers on import; ours replace them.
    root = std_logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, std_logging.FileHandler):
            root.removeHandler(handler)
    root.addHandler(file_handler)
    root.addHandler(console_handler)
    root.setLevel(std_logging.INFO)
    logging.set_verbosity(logging.INFO)
    return log_path


def _console_filter(record: std_logging.LogRecord) -> bool:
    # Library warnings (TFT table lifting, Beam worker options) are routine here and
    # stay in the log file; IDPT's own lines and every error reach the console.
    if record.levelno >= std_logging.ERROR:
        return True
    if record.pathname and any(f"/{module}/" in record.pathname for module in _IDPT_MODULES):
        return True
    return bool(_PROGRESS.match(str(record.msg)))


def latest_output_uris(config: PipelineConfig, node_id: str, output_key: str) -> list[str]:
    """Return the URIs of `output_key` from the latest successful or cached run of a node.

    Args:
      config: the run's configuration (it locates the metadata store).
      node_id: component id, e.g. "LogIngestion" or "Transform".
      output_key: the output's name, e.g. "examples" or "transform_graph".

    Returns:
      The artifact URIs, empty when the node never completed.
    """
    store = metadata_store.MetadataStore(metadata_connection_config(config))
    context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{node_id}")
    if context is None:
        return []
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    executions = [
        execution
        for execution in store.get_executions_by_context(context.id)
        if execution.last_known_state in done
    ]
    if not executions:
        return []
    latest = max(executions, key=lambda execution: execution.id)
    artifact_ids = [
        event.artifact_id
        for event in store.get_events_by_execution_ids([latest.id])
        if event.type == metadata_store_pb2.Event.OUTPUT
        and any(step.key == output_key for step in event.path.steps)
    ]
    return [artifact.uri for artifact in store.get_artifacts_by_id(artifact_ids)]
