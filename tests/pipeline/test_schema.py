"""Schema curation and the anomalies gate, on hand-built protos."""

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from tfx_pipeline import schema

# What SchemaGen infers from a small train split: ids with few values get a
# string domain, side features seen in every row get shape [1].
INFERRED = """
feature { name: "user_id" type: BYTES domain: "user_id"
  presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "item_id" type: BYTES domain: "item_id"
  presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "timestamp" type: INT
  presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "label" type: INT int_domain { min: 0 max: 1 }
  presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "user_country" type: BYTES domain: "user_country"
  presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "item_price" type: FLOAT
  presence { min_fraction: 0.9 min_count: 1 } value_count { min: 1 max: 1 } }
string_domain { name: "user_id" value: "u1" value: "u2" }
string_domain { name: "item_id" value: "i1" }
string_domain { name: "user_country" value: "US" }
"""


def _inferred() -> schema_pb2.Schema:
    return text_format.Parse(INFERRED, schema_pb2.Schema())


def _feature(curated: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    return next(feature for feature in curated.feature if feature.name == name)


def test_id_columns_are_open_vocabularies():
    curated = schema.curate_schema(_inferred())
    for name in ("user_id", "item_id"):
        feature = _feature(curated, name)
        assert feature.WhichOneof("domain_info") is None, name
        assert feature.presence.min_fraction == 1.0
        assert [dim.size for dim in feature.shape.dim] == [1]
    assert list(curated.string_domain) == []


def test_side_features_become_optional():
    curated = schema.curate_schema(_inferred())
    for name in ("user_country", "item_price"):
        feature = _feature(curated, name)
        assert feature.presence.min_fraction == 0.0, name
        assert not feature.HasField("shape"), name
        assert (feature.value_count.min, feature.value_count.max) == (1, 1)
        assert feature.WhichOneof("domain_info") is None, name


def test_label_domain_is_zero_one():
    label = _feature(schema.curate_schema(_inferred()), "label")
    assert (label.int_domain.min, label.int_domain.max) == (0, 1)


def test_missing_required_column_is_an_error():
    inferred = _inferred()
    del inferred.feature[2]  # timestamp
    with pytest.raises(schema.SchemaCurationError, match="the train split has no 'timestamp'"):
        schema.curate_schema(inferred)


def test_numeric_id_column_is_an_error():
    inferred = _inferred()
    inferred.feature[1].type = schema_pb2.INT
    with pytest.raises(schema.SchemaCurationError) as error:
        schema.curate_schema(inferred)
    assert str(error.value) == (
        "column 'item_id' has type INT in the train split, expected BYTES: check the column "
        "mapping (ids are read as strings, timestamps and labels as integers)."
    )


def _anomalies(text: str) -> anomalies_pb2.Anomalies:
    return text_format.Parse(text, anomalies_pb2.Anomalies())


LABEL_ANOMALY = """
anomaly_info { key: "label" value { severity: ERROR short_description: "Out-of-range values"
  reason { type: INT_TYPE_BIG_INT description: "Unexpectedly large value: 2." } } }
"""
COUNTRY_ANOMALY = """
anomaly_info { key: "user_country" value { severity: ERROR short_description: "Unexpected"
  reason { type: ENUM_TYPE_UNEXPECTED_STRING_VALUES description: "Examples contain XX." } } }
"""
EVAL_ANOMALIES = LABEL_ANOMALY + COUNTRY_ANOMALY


def test_canonical_anomalies_stop_the_run():
    anomalies = {"eval": _anomalies(EVAL_ANOMALIES), "train": anomalies_pb2.Anomalies()}
    with pytest.raises(schema.AnomaliesError) as error:
        schema.check_anomalies(anomalies, "error")
    assert str(error.value) == (
        "ExampleValidator found anomalies in canonical columns:\n"
        "  eval: label: Unexpectedly large value: 2.\n"
        "Fix the log or its column mapping, or rerun with --anomalies warning to continue "
        "despite them."
    )


def test_warning_severity_passes():
    schema.check_anomalies({"eval": _anomalies(EVAL_ANOMALIES)}, "warning")


def test_side_feature_anomalies_pass():
    schema.check_anomalies({"eval": _anomalies(COUNTRY_ANOMALY)}, "error")


def test_unknown_severity_is_rejected():
    with pytest.raises(ValueError, match="anomaly severity 'ignore' is invalid"):
        schema.check_anomalies({}, "ignore")
