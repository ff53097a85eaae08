"""Read what one pipeline run produced from its ML Metadata store.

TFX records every component execution, cached or not, in ML Metadata with a
`pipeline_run` context per run and a `node` context per component. The run
report and the tests use this module to find each component's output
artifacts for one run without guessing folder names.
"""

from __future__ import annotations

import collections
import dataclasses

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

PIPELINE_RUN_CONTEXT = "pipeline_run"
NODE_CONTEXT = "node"


@dataclasses.dataclass
class NodeRun:
    """One component's execution in a run.

    Attributes:
      node_id: the component id, e.g. `Transform`.
      state: the execution's last known state name, e.g. COMPLETE, CACHED, FAILED.
      outputs: output key to the artifacts written under it.
    """

    node_id: str
    state: str
    outputs: dict[str, list[metadata_store_pb2.Artifact]]


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """Open the SQLite ML Metadata store of a local run, read-only in intent."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_run_id(store: metadata_store.MetadataStore, pipeline_name: str) -> str:
    """Return the id of the newest run of `pipeline_name`.

    Raises:
      LookupError: the store contains no run of that pipeline.
    """
    runs = store.get_contexts_by_type(PIPELINE_RUN_CONTEXT)
    runs = [run for run in runs if _belongs_to(store, run, pipeline_name)]
    if not runs:
        raise LookupError(f"no run of pipeline '{pipeline_name}' in the metadata store")
    return max(runs, key=lambda run: run.create_time_since_epoch).name


def node_runs(store: metadata_store.MetadataStore, run_id: str) -> dict[str, NodeRun]:
    """Return every component execution of run `run_id`, keyed by component id."""
    run_context = store.get_context_by_type_and_name(PIPELINE_RUN_CONTEXT, run_id)
    if run_context is None:
        raise LookupError(f"no pipeline run '{run_id}' in the metadata store")
    executions = store.get_executions_by_context(run_context.id)
    result = {}
    for execution in sorted(executions, key=lambda item: item.create_time_since_epoch):
        node_id = _node_id(store, execution)
        if node_id is None:
            continue
        result[node_id] = NodeRun(
            node_id=node_id,
            state=metadata_store_pb2.Execution.State.Name(execution.last_known_state),
            outputs=_outputs(store, execution),
        )
    return result


def _belongs_to(store, run_context, pipeline_name: str) -> bool:
    parents = store.get_parent_contexts_by_context(run_context.id)
    if any(parent.name == pipeline_name for parent in parents):
        return True
    # Some TFX versions do not link run contexts to the pipeline context; the
    # run's executions then tell which pipeline it belongs to.
    executions = store.get_executions_by_context(run_context.id)
    for execution in executions[:1]:
        contexts = store.get_contexts_by_execution(execution.id)
        return any(context.name == pipeline_name for context in contexts)
    return False


def _node_id(store, execution) -> str | None:
    for context in store.get_contexts_by_execution(execution.id):
        context_type = store.get_context_types_by_id([context.type_id])[0]
        if context_type.name == NODE_CONTEXT:
            # Node contexts are named `<pipeline name>.<component id>`; pipeline names
            # may contain dots (a dataset called `log.csv`), component ids do not.
            return context.name.rsplit(".", 1)[-1]
    return None


def _outputs(store, execution) -> dict[str, list[metadata_store_pb2.Artifact]]:
    output_types = (
        metadata_store_pb2.Event.OUTPUT,
        metadata_store_pb2.Event.DECLARED_OUTPUT,
        metadata_store_pb2.Event.PENDING_OUTPUT,
    )
    events = [
        event
        for event in store.get_events_by_execution_ids([execution.id])
        if event.type in output_types
    ]
    artifacts = {
        artifact.id: artifact
        for artifact in store.get_artifacts_by_id([event.artifact_id for event in events])
    }
    outputs = collections.defaultdict(list)
    for event in events:
        key = event.path.steps[0].key if event.path.steps else ""
        outputs[key].append(artifacts[event.artifact_id])
    return dict(outputs)
