"""The curated schema and the anomalies gate.

SchemaGen infers a schema from the train split's statistics; `curate_schema`
then fixes what inference cannot know:

- the required canonical columns (user_id, item_id: BYTES; timestamp, label: INT)
  are present in every example with exactly one value (shape [1]), and the label
  lies in [0, 1];
- id columns are open vocabularies: inference gives a small-cardinality string
  column a domain of its train values, under which every new eval id would be an
  anomaly, so no id column keeps a domain;
- optional columns (weight, user_*/item_* side features) may be absent and carry at
  most one value, with no domain: a new category maps to the OOV index in Transform.
  Without a fixed shape Transform reads them as SparseTensors.

Two small components wrap this: `SchemaCurator` (inferred schema in, curated
schema out) and `AnomaliesGate`, which stops the run when ExampleValidator found
anomalies in a canonical column (side-feature and dataset-level anomalies are
logged), unless the severity is lowered to "warning".
"""

import os

from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils

from tfx_pipeline.config import ANOMALIES_ERROR, ANOMALIES_WARNING, ANOMALY_SEVERITIES
from transforms import features

SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "SchemaDiff.pb"  # ExampleValidator's file in each Split-<name> folder

REQUIRED_TYPES = {
    features.USER_ID: schema_pb2.BYTES,
    features.ITEM_ID: schema_pb2.BYTES,
    features.TIMESTAMP: schema_pb2.INT,
    features.LABEL: schema_pb2.INT,
}
OPTIONAL_TYPES = {features.WEIGHT: schema_pb2.FLOAT}
CANONICAL_COLUMNS = (*features.REQUIRED_COLUMNS, *features.OPTIONAL_COLUMNS)


class SchemaCurationError(ValueError):
    """The inferred schema lacks a required canonical column or has the wrong type."""


class AnomaliesError(RuntimeError):
    """ExampleValidator found anomalies in canonical columns."""


def curate_schema(inferred: schema_pb2.Schema) -> schema_pb2.Schema:
    """Return a copy of an inferred schema with the canonical rules applied.

    Args:
      inferred: SchemaGen's schema of the train split.

    Returns:
      The curated schema (see the module docstring).

    Raises:
      SchemaCurationError: a required column is missing, or an id column is not
        BYTES (the reader or source wrote it as a number).
    """
    schema = schema_pb2.Schema()
    schema.CopyFrom(inferred)
    by_name = {feature.name: feature for feature in schema.feature}

    for name, kind in REQUIRED_TYPES.items():
        if name not in by_name:
            raise SchemaCurationError(
                f"the train split has no {name!r} column (columns: {sorted(by_name)}): "
                "the ingestion writes every required canonical column, so the train split "
                "is empty or was not written by the IDPT ingestion."
            )
        _check_type(by_name[name], kind)
        _make_required(by_name[name], kind)

    label = by_name[features.LABEL]
    label.int_domain.min = 0
    label.int_domain.max = 1

    for feature in schema.feature:
        if feature.name in OPTIONAL_TYPES or features.is_side_feature(feature.name):
            if feature.name in OPTIONAL_TYPES:
                _check_type(feature, OPTIONAL_TYPES[feature.name])
            _make_optional(feature)

    _drop_unused_string_domains(schema)
    return schema


def _check_type(feature: schema_pb2.Feature, kind: int) -> None:
    if feature.type != kind:
        raise SchemaCurationError(
            f"column {feature.name!r} has type {schema_pb2.FeatureType.Name(feature.type)} in "
            f"the train split, expected {schema_pb2.FeatureType.Name(kind)}: check the column "
            "mapping (ids are read as strings, timestamps and labels as integers)."
        )


def _make_required(feature: schema_pb2.Feature, kind: int) -> None:
    feature.type = kind
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    feature.ClearField("value_count")
    feature.ClearField("value_counts")
    feature.shape.Clear()
    feature.shape.dim.add().size = 1
    feature.ClearField("domain_info")
    feature.ClearField("distribution_constraints")


def _make_optional(feature: schema_pb2.Feature) -> None:
    feature.presence.min_fraction = 0.0
    feature.presence.min_count = 0
    feature.ClearField("shape")
    feature.ClearField("value_counts")
    feature.value_count.min = 1
    feature.value_count.max = 1
    feature.ClearField("domain_info")
    feature.ClearField("distribution_constraints")


def _drop_unused_string_domains(schema: schema_pb2.Schema) -> None:
    used = {feature.domain for feature in schema.feature if feature.HasField("domain")}
    kept = [domain for domain in schema.string_domain if domain.name in used]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)


def canonical_anomalies(
    anomalies_by_split: dict[str, anomalies_pb2.Anomalies],
) -> tuple[list[str], list[str]]:
    """Sort ExampleValidator anomalies into canonical-column and other anomalies.

    Args:
      anomalies_by_split: split name -> that split's Anomalies.

    Returns:
      (canonical, other): one line per anomaly, "split: column: description".
    """
    canonical, other = [], []
    for split, anomalies in sorted(anomalies_by_split.items()):
        for name, info in sorted(anomalies.anomaly_info.items()):
            line = f"{split}: {name}: {_describe(info)}"
            (canonical if name in CANONICAL_COLUMNS else other).append(line)
        if anomalies.HasField("dataset_anomaly_info"):
            other.append(f"{split}: dataset: {_describe(anomalies.dataset_anomaly_info)}")
    return canonical, other


def _describe(info: anomalies_pb2.AnomalyInfo) -> str:
    reasons = "; ".join(reason.description for reason in info.reason if reason.description)
    return reasons or info.description or info.short_description


def check_anomalies(anomalies_by_split: dict[str, anomalies_pb2.Anomalies], severity: str) -> None:
    """Raise AnomaliesError for canonical-column anomalies unless severity is "warning".

    Raises:
      AnomaliesError: listing every canonical-column anomaly and the fix.
      ValueError: an unknown severity.
    """
    if severity not in ANOMALY_SEVERITIES:
        raise ValueError(
            f"anomaly severity {severity!r} is invalid: use {' or '.join(ANOMALY_SEVERITIES)}."
        )
    canonical, other = canonical_anomalies(anomalies_by_split)
    for line in other:
        logging.warning("Anomaly outside the canonical columns (not blocking): %s", line)
    if not canonical:
        return
    listing = "\n  ".join(canonical)
    if severity == ANOMALIES_WARNING:
        logging.warning("Anomalies in canonical columns (severity warning):\n  %s", listing)
        return
    raise AnomaliesError(
        f"ExampleValidator found anomalies in canonical columns:\n  {listing}\n"
        "Fix the log or its column mapping, or rerun with --anomalies warning to continue "
        "despite them."
    )


def load_anomalies(anomalies_artifact: tfx.dsl.Artifact) -> dict[str, anomalies_pb2.Anomalies]:
    """Return split name -> Anomalies for every split of an ExampleAnomalies artifact."""
    result = {}
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(
            artifact_utils.get_split_uri([anomalies_artifact], split), ANOMALIES_FILE
        )
        result[split] = anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))
    return result


def read_schema(schema_uri: str) -> schema_pb2.Schema:
    """Return the schema stored in a Schema artifact folder."""
    return io_utils.parse_pbtxt_file(os.path.join(schema_uri, SCHEMA_FILE), schema_pb2.Schema())


@tfx.dsl.components.component
def SchemaCurator(  # noqa: N802 (TFX components are named like classes)
    inferred_schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
):
    """Write the curated version of SchemaGen's schema (see `curate_schema`)."""
    curated = curate_schema(read_schema(inferred_schema.uri))
    io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE), curated)
    logging.info("Curated schema written to %s.", schema.uri)


@tfx.dsl.components.component
def AnomaliesGate(  # noqa: N802 (TFX components are named like classes)
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    severity: tfx.dsl.components.Parameter[str] = ANOMALIES_ERROR,
):
    """Stop the run on canonical-column anomalies unless severity is "warning"."""
    check_anomalies(load_anomalies(anomalies), severity)
    logging.info("Anomalies gate passed (severity %s).", severity)
