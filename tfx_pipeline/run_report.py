"""The report printed and written at the end of `idpt run`.

`full_report` reads what the latest run of a dataset produced from its ML
Metadata store. Cached executions are included, because TFX links their reused
outputs to the new run. The sections are provenance, data counts, Stage I
metrics by epoch, Stage II metrics by slice, gate decisions with their reasons,
and pushed paths. A component that did not run in this run gets a "not run"
entry with the reason. `write_full_report` adds the PNG plots and writes
REPORT_JSON and REPORT_TEXT beside them in the dataset folder.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from ml_metadata.proto import metadata_store_pb2
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.writers import eval_config_writer

from tfx_pipeline import local_runner, plots, run_artifacts, training
from tfx_pipeline.components import ingestion, push, vocabulary_check
from tfx_pipeline.config import PipelineConfig
from trainer import retrieval_metrics, stage1
from transforms import features, readers

REPORT_JSON = "run_report.json"
REPORT_TEXT = "run_report.txt"
RECALL_PLOT = "stage1_recall_by_epoch.png"
AUC_PLOT = "stage2_auc_by_popularity_bucket.png"
RECALL_PLOT_TITLE = "stage I recall@K by epoch"
AUC_PLOT_TITLE = "stage II AUC by popularity bucket"

INGESTION_NODE = "LogIngestion"
VOCABULARY_CHECK_NODE = "VocabularyCheck"

# Distributions whose versions the provenance section records.
PACKAGES = (
    "tfx",
    "tensorflow",
    "tf-keras",
    "tensorflow-recommenders",
    "tensorflow-transform",
    "tensorflow-model-analysis",
    "apache-beam",
    "kfp",
)

NOT_RUN = "not run"
OVERALL_SLICE = "overall"

# Section names, shared by the builders, `write_full_report` and the tests.
PROVENANCE = "provenance"
CONFIG = "config"
STAGE1 = "stage I retrieval (eval split)"
RETRIEVAL_GATE = "retrieval gate"
STAGE2 = "stage II ranking (eval split, TFMA)"
RANKING_GATE = "ranking gate (Evaluator)"
SERVING_VALIDATION = "serving validation"
PUSH = "push"
PLOTS = "plots"

_MOVIELENS_FORMATS = (readers.MOVIELENS_100K, readers.MOVIELENS_DAT, readers.MOVIELENS_CSV)
_TFMA_METRICS = (
    ("examples", "example_count"),
    ("AUC", "auc"),
    ("log loss", "binary_crossentropy"),
    ("calibration", "calibration"),
)
_RETURNING_NAMES = {0: "new", 1: "returning"}
_AFTER_STAGE2 = (training.EVALUATOR, training.SERVING_VALIDATOR)


@dataclasses.dataclass
class RunReport:
    """Named sections of JSON-ready values, in insertion order.

    A value that is a list of dicts is a table (one dict per row), which the
    text form prints as aligned columns. A list of strings prints one per line.
    """

    sections: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, values: dict[str, Any]) -> None:
        """Add or replace the section `name`."""
        self.sections[name] = values

    def to_text(self) -> str:
        """Return the report as indented `key: value` lines, one block per section."""
        lines = []
        for name, values in self.sections.items():
            lines.append(f"{name}:")
            lines.extend(_format_values(values, indent=2))
        return "\n".join(lines) + "\n"

    def write(self, folder: str) -> tuple[str, str]:
        """Write REPORT_JSON and REPORT_TEXT into `folder`; return both paths.

        NaN and infinite numbers (e.g. a diverged loss) are written as JSON null,
        because strict JSON has no literal for them.
        """
        os.makedirs(folder, exist_ok=True)
        json_path = os.path.join(folder, REPORT_JSON)
        text_path = os.path.join(folder, REPORT_TEXT)
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(_finite_or_none(self.sections), file, indent=2, ensure_ascii=False)
            file.write("\n")
        with open(text_path, "w", encoding="utf-8") as file:
            file.write(self.to_text())
        return json_path, text_path


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def _format_values(values: dict[str, Any], indent: int) -> list[str]:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(_format_values(value, indent + 2))
        elif _is_table(value):
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(format_table(value, indent + 2))
        elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(f"{' ' * (indent + 2)}- {item}" for item in value)
        else:
            lines.append(f"{' ' * indent}{key}: {_format_cell(value)}")
    return lines


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def format_table(rows: Sequence[dict[str, Any]], indent: int = 0) -> list[str]:
    """Format rows as aligned columns under a header line.

    Columns are the rows' keys in order of first appearance. Floats show four
    decimals, and a missing cell or None shows "-". Text is left-aligned and
    numbers are right-aligned.

    Args:
      rows: one dict per row.
      indent: spaces before each line.

    Returns:
      The header line and one line per row.
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]
    numeric = [
        all(isinstance(row.get(column), int | float | None) for row in rows) for column in columns
    ]

    def join(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ]
        return (" " * indent + "  ".join(parts)).rstrip()

    return [join(columns), *(join(line) for line in cells)]


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def first_half_report(config: PipelineConfig) -> RunReport:
    """Build the report of ingestion counts, split sizes and vocabulary sizes of the latest run.

    Args:
      config: the run's configuration (it locates the metadata store).

    Returns:
      Sections "run", "ingestion", "splits" and "vocabularies"; a section whose
      component has not completed is left out.
    """
    report = RunReport()
    report.add(
        "run", {"data": config.data, "format": config.data_format, "outputs": config.dataset_dir}
    )
    examples = local_runner.latest_output_uris(config, INGESTION_NODE, ingestion.EXAMPLES_KEY)
    sizes = local_runner.latest_output_uris(config, VOCABULARY_CHECK_NODE, "vocabulary_sizes")
    _add_data_sections(report, examples[0] if examples else None, sizes[0] if sizes else None)
    return report


def _add_data_sections(report: RunReport, examples_uri: str | None, sizes_uri: str | None) -> None:
    if examples_uri:
        counts = ingestion.load_report(examples_uri)
        report.add(
            "ingestion",
            {
                "rows read": counts["rows_read"],
                "rows kept": counts["rows_kept"],
                "rows dropped": counts["rows_dropped"],
                "dropped by reason": counts["dropped"],
                "missing side-feature values": counts["missing_values"],
            },
        )
        report.add(
            "splits",
            {
                "T1 (train end)": counts["train_end"],
                "T2 (eval end)": counts["eval_end"],
                "cut-off rule": counts["cutoff_rule"],
                "rows": counts["rows_per_split"],
                "pre-training rows": counts.get("pretraining_rows"),
            },
        )
    if sizes_uri:
        report.add(
            "vocabularies (tokens, OOV index excluded)", vocabulary_check.load_sizes(sizes_uri)
        )


# ---------------------------------------------------------------------------
# The full report
# ---------------------------------------------------------------------------


def full_report(config: PipelineConfig) -> RunReport:
    """Build the report of the latest run of `config`'s dataset from ML Metadata.

    Args:
      config: the run's configuration (it locates the metadata store).

    Returns:
      The report without plots (see `write_full_report`).

    Raises:
      LookupError: the metadata store contains no run of this pipeline.
    """
    store = run_artifacts.open_store(config.metadata_path)
    run_id = run_artifacts.latest_run_id(store, config.pipeline_name)
    return build_report(config, run_id, run_artifacts.node_runs(store, run_id))


def remove_report(folder: str) -> list[str]:
    """Delete the report files and plots of an earlier run from `folder`.

    A run calls this before it starts, so a run that fails leaves no report of the run
    before it that could be read as its own.

    Returns:
      The paths deleted.
    """
    removed = []
    for name in (REPORT_JSON, REPORT_TEXT, RECALL_PLOT, AUC_PLOT):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
            removed.append(path)
    return removed


def write_full_report(config: PipelineConfig) -> tuple[RunReport, str]:
    """Build the full report, draw its plots and write both files into the dataset folder.

    Args:
      config: the run's configuration.

    Returns:
      The report (with its "plots" section) and the path of REPORT_JSON.
    """
    report = full_report(config)
    report.add(PLOTS, draw_plots(report, config.dataset_dir))
    # The long config section stays last, after the plots.
    report.add(CONFIG, report.sections.pop(CONFIG))
    json_path, _ = report.write(config.dataset_dir)
    return report, json_path


def build_report(
    config: PipelineConfig, run_id: str, runs: dict[str, run_artifacts.NodeRun]
) -> RunReport:
    """Build the report from one run's component executions.

    Args:
      config: the run's configuration.
      run_id: the pipeline run's id (its ML Metadata context name).
      runs: component id to its execution in this run (`run_artifacts.node_runs`).

    Returns:
      Sections in run order, where each component that did not run has a "not run" entry.
    """
    report = RunReport()
    report.add(PROVENANCE, provenance(config, run_id, runs))
    _add_data_sections(
        report,
        _output_uri(runs, INGESTION_NODE, ingestion.EXAMPLES_KEY),
        _output_uri(runs, VOCABULARY_CHECK_NODE, "vocabulary_sizes"),
    )
    report.add(STAGE1, _stage1_section(config, runs))
    report.add(RETRIEVAL_GATE, _retrieval_gate_section(config, runs))
    stage2, ranking_gate = _evaluation_sections(config, runs)
    report.add(STAGE2, stage2)
    report.add(RANKING_GATE, ranking_gate)
    report.add(SERVING_VALIDATION, _serving_section(config, runs))
    report.add(PUSH, _push_section(config, runs))
    # Last, because it is long and the results above are what a reader looks for first.
    report.add(CONFIG, config.to_dict())
    return report


def provenance(
    config: PipelineConfig, run_id: str, runs: dict[str, run_artifacts.NodeRun]
) -> dict[str, Any]:
    """Return where the run's data, settings and software came from.

    Returns:
      The run id, data path, format and checksum, components reused from the
      cache and package versions (the configuration is a section of its own).
    """
    cached = [node_id for node_id, run in runs.items() if run.state == "CACHED"]
    return {
        "run id": run_id,
        "data": config.data,
        "format": config.data_format,
        "data checksum": data_checksum(config.data, config.data_format),
        "outputs": config.dataset_dir,
        "components reused from the cache": cached or "none",
        "package versions": package_versions(),
    }


def data_checksum(data: str, data_format: str) -> dict[str, Any]:
    """Return a checksum of the log's files, or the spec of a synthetic log.

    The digest is SHA-256 over the bytes of every file the run reads, in sorted
    order of absolute path, so one file's digest equals `sha256sum` of it.
    MovieLens logs also cover the other files of their folder, which the readers
    join in (u.user, u.item, movies.csv, ...).

    Args:
      data: log path (file, folder or glob) or a synthetic spec.
      data_format: one of `transforms.readers.FORMATS`.

    Returns:
      {"synthetic spec": data} for a synthetic log, else {"sha256": hex digest,
      "files": number of files}.
    """
    if data_format == readers.SYNTHETIC:
        return {"synthetic spec": data}
    files = set(readers.list_shards(data, data_format))
    if data_format in _MOVIELENS_FORMATS:
        for shard in list(files):
            folder = os.path.dirname(os.path.abspath(shard))
            files.update(os.path.join(folder, name) for name in os.listdir(folder))
    paths = sorted(os.path.abspath(file) for file in files if os.path.isfile(file))

    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return {"sha256": digest.hexdigest(), "files": len(paths)}


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Return the installed version of Python and of each distribution in `packages`."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ---------------------------------------------------------------------------
# Artifact access
# ---------------------------------------------------------------------------


def _artifact(
    runs: dict[str, run_artifacts.NodeRun], node_id: str, output_key: str
) -> metadata_store_pb2.Artifact | None:
    run = runs.get(node_id)
    if run is None or run.state not in ("COMPLETE", "CACHED"):
        return None
    artifacts = run.outputs.get(output_key, [])
    return artifacts[0] if artifacts else None


def _output_uri(runs: dict[str, run_artifacts.NodeRun], node_id: str, key: str) -> str | None:
    artifact = _artifact(runs, node_id, key)
    return artifact.uri if artifact is not None else None


def _property(artifact: metadata_store_pb2.Artifact, name: str) -> Any:
    """Return a custom property's value (int, float or str), or None when it is absent."""
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else None


def _state_note(runs: dict[str, run_artifacts.NodeRun], node_id: str) -> str:
    return "reused from the cache" if runs[node_id].state == "CACHED" else "ran in this run"


def not_run_reason(
    config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun], node_id: str
) -> str:
    """Return why component `node_id` has no completed execution in this run.

    Args:
      config: the run's configuration.
      runs: component id to its execution in this run.
      node_id: a component id from `tfx_pipeline.training`.

    Returns:
      One sentence, e.g. "the retrieval gate did not bless the Stage I model (...)".
    """
    run = runs.get(node_id)
    if run is not None and run.state not in ("COMPLETE", "CACHED"):
        return f"its execution ended in state {run.state}. See the run's log for the error"
    if config.first_half_only:
        return "--first-half-only stops the run after Transform"
    if node_id in _AFTER_STAGE2 and _artifact(runs, training.STAGE2_TRAINER, "model") is None:
        return f"Stage II did not run (see '{STAGE2}')"
    stage1_nodes = (training.STAGE1_TRAINER, training.RETRIEVAL_GATE)
    if config.training.skip_stage1 and node_id in stage1_nodes:
        return (
            "Stage I was skipped (--skip-stage1), so Stage II warm-started from the latest "
            "blessed Stage I model of an earlier run"
        )
    gate = _artifact(runs, training.RETRIEVAL_GATE, "blessing")
    if gate is not None and not _property(gate, push.BLESSED_PROPERTY):
        return (
            "the retrieval gate did not bless the Stage I model "
            f"({_property(gate, 'blessing_message')}), so the run stopped before Stage II"
        )
    return "an upstream component did not complete in this run"


def _not_run(config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun], node_id: str) -> dict:
    return {NOT_RUN: not_run_reason(config, runs, node_id)}


# ---------------------------------------------------------------------------
# Stage I and the retrieval gate
# ---------------------------------------------------------------------------


def _stage1_section(config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun]) -> dict:
    model = _artifact(runs, training.STAGE1_TRAINER, "model")
    if model is None:
        return _not_run(config, runs, training.STAGE1_TRAINER)
    history = read_stage1_history(model.uri)
    return {
        "model": model.uri,
        "execution": _state_note(runs, training.STAGE1_TRAINER),
        "epochs": stage1_epoch_rows(history),
        "last epoch by slice": stage1_slice_rows(history),
    }


def read_stage1_history(model_uri: str) -> dict:
    """Read the metric history that Stage I saves beside its serving model.

    Args:
      model_uri: the Stage I Model artifact folder.

    Returns:
      The history document (`trainer.stage1.history_document`).
    """
    return stage1.read_history(os.path.join(model_uri, push.SERVING_MODEL_FOLDER))


def stage1_epoch_rows(history: dict) -> list[dict[str, Any]]:
    """Return one row per epoch: epoch, train loss, eval loss and eval recall@K per K."""
    rows = []
    for record in history.get("epochs", []):
        row = {
            "epoch": record["epoch"],
            "loss": record.get("loss"),
            "eval_loss": record.get("eval_loss"),
        }
        for k in history.get("recall_ks", []):
            name = retrieval_metrics.recall_metric_name(k)
            row[name] = record.get(name)
        rows.append(row)
    return rows


def stage1_slice_rows(history: dict) -> list[dict[str, Any]]:
    """Return the last epoch's recall@K per item popularity bucket and per user group."""
    final = history.get("final", {})
    slices = [
        (f"{features.ITEM_POPULARITY_BUCKET} {name}", {"bucket": index})
        for index, name in enumerate(history.get("popularity_bucket_names", []))
    ]
    slices += [
        (
            f"{features.USER_IS_RETURNING} {_RETURNING_NAMES[0]}",
            {"users": retrieval_metrics.NEW_USERS},
        ),
        (
            f"{features.USER_IS_RETURNING} {_RETURNING_NAMES[1]}",
            {"users": retrieval_metrics.RETURNING_USERS},
        ),
    ]

    rows = []
    for label, slice_arguments in slices:
        positives = final.get(retrieval_metrics.positives_metric_name(**slice_arguments))
        row = {"slice": label, "eval positives": positives}
        for k in history.get("recall_ks", []):
            # Recall over no positives is undefined, but the history records 0 there.
            recall = final.get(retrieval_metrics.recall_metric_name(k, **slice_arguments))
            row[retrieval_metrics.recall_metric_name(k)] = recall if positives else None
        rows.append(row)
    return rows


def _retrieval_gate_section(config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun]) -> dict:
    blessing = _artifact(runs, training.RETRIEVAL_GATE, "blessing")
    if blessing is None:
        return _not_run(config, runs, training.RETRIEVAL_GATE)
    gate = config.training.retrieval_gate
    return {
        "blessed": bool(_property(blessing, push.BLESSED_PROPERTY)),
        "reason": _property(blessing, "blessing_message"),
        "thresholds": {
            "recall_k": gate.recall_k,
            "floor": gate.floor,
            "tolerance below the baseline": gate.tolerance,
        },
        "baseline model": _property(blessing, "baseline_model") or "none",
        "execution": _state_note(runs, training.RETRIEVAL_GATE),
    }


# ---------------------------------------------------------------------------
# Stage II: TFMA metrics and the Evaluator's blessing
# ---------------------------------------------------------------------------


def _evaluation_sections(
    config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun]
) -> tuple[dict, dict]:
    evaluation = _artifact(runs, training.EVALUATOR, "evaluation")
    blessing = _artifact(runs, training.EVALUATOR, "blessing")
    if evaluation is None or blessing is None:
        # A Stage II model that was never trained explains the missing evaluation best.
        stage2_model = _artifact(runs, training.STAGE2_TRAINER, "model")
        node_id = training.EVALUATOR if stage2_model is not None else training.STAGE2_TRAINER
        return _not_run(config, runs, node_id), _not_run(config, runs, node_id)

    metrics = read_ranking_metrics(evaluation.uri)
    baseline_uri = _property(blessing, "baseline_model")
    stage2 = {
        "model": _property(blessing, "current_model"),
        "baseline model": baseline_uri or "none",
        "evaluation (tfma.load_eval_result)": evaluation.uri,
        "slices": ranking_metric_rows(metrics),
    }

    gate = config.training.ranking_gate
    validation = read_threshold_failures(evaluation.uri)
    ranking_gate = {
        "blessed": bool(_property(blessing, push.BLESSED_PROPERTY)),
        "reason": _ranking_reason(
            bool(_property(blessing, push.BLESSED_PROPERTY)), baseline_uri, validation
        ),
        "value thresholds": {"min AUC": gate.min_auc, "max log loss": gate.max_log_loss},
        "change thresholds against the baseline": {
            "max AUC drop": gate.max_auc_drop,
            "max log loss rise": gate.max_log_loss_rise,
        },
        "failed thresholds": validation["failures"] or "none",
        "execution": _state_note(runs, training.EVALUATOR),
    }
    return stage2, ranking_gate


def read_ranking_metrics(evaluation_uri: str) -> dict[str, dict[str, dict[str, float | None]]]:
    """Read AUC, log loss, calibration and example count by slice from a TFMA result.

    Args:
      evaluation_uri: the Evaluator's evaluation artifact folder.

    Returns:
      {"candidate": {slice label: {column: value}}, "baseline": {...}}, with "baseline"
      only when the Evaluator compared with a blessed baseline. Slice labels are
      OVERALL_SLICE, "item_popularity_bucket <train counts>" and
      "user_is_returning new|returning".
    """
    # The Evaluator drops the baseline model spec when no blessed baseline exists, and
    # then writes the candidate's metrics under the model name "".
    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    baseline_names = [spec.name for spec in eval_config.model_specs if spec.is_baseline]
    candidate_names = [spec.name for spec in eval_config.model_specs if not spec.is_baseline]
    roles = {"candidate": candidate_names[0] if candidate_names else ""}
    if baseline_names:
        roles["baseline"] = baseline_names[0]

    metrics = {}
    for role, model_name in roles.items():
        result = tfma.load_eval_result(evaluation_uri, model_name=model_name or None)
        metrics[role] = {
            _slice_label(slice_key): _slice_metrics(values)
            for slice_key, values in result.slicing_metrics
        }
    return metrics


def _slice_label(slice_key: tuple) -> str:
    if not slice_key:
        return OVERALL_SLICE
    parts = []
    for column, value in slice_key:
        if column == features.ITEM_POPULARITY_BUCKET:
            parts.append(f"{column} {_bucket_name(value)}")
        elif column == features.USER_IS_RETURNING:
            parts.append(f"{column} {_RETURNING_NAMES.get(int(value), value)}")
        else:
            parts.append(f"{column} {value}")
    return ", ".join(parts)


def _bucket_name(bucket: Any) -> str:
    names = features.POPULARITY_BUCKET_NAMES
    index = int(bucket)
    return names[index] if 0 <= index < len(names) else str(bucket)


def _slice_metrics(values: dict) -> dict[str, float | int | None]:
    # TFMA's view nests metrics as {output name: {sub key: {metric: {"doubleValue": x}}}}.
    # The ranking model has one output and no sub keys.
    metrics = values.get("", {}).get("", {})

    def metric(name: str) -> float | None:
        # Protobuf's JSON form writes non-finite doubles as strings such as "NaN".
        value = metrics.get(name, {}).get("doubleValue")
        if value is None or not math.isfinite(float(value)):
            return None
        return float(value)

    row = {column: metric(name) for column, name in _TFMA_METRICS}
    if row["examples"] is not None:
        row["examples"] = int(row["examples"])
    # AUC is undefined on a slice with one label class, but TFMA reports 0 there.
    if metric("mean_label") in (0.0, 1.0):
        row["AUC"] = None
    return row


def ranking_metric_rows(metrics: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """Return one row per slice: the candidate's metrics, then the baseline's when present.

    Rows are ordered overall first, then popularity buckets from rare to
    popular, then new and returning users.
    """
    candidate = metrics.get("candidate", {})
    baseline = metrics.get("baseline")
    rows = []
    for label in sorted(candidate, key=_slice_order):
        row = {"slice": label, **candidate[label]}
        if baseline is not None:
            for column, value in baseline.get(label, {}).items():
                if column != "examples":
                    row[f"baseline {column}"] = value
        rows.append(row)
    return rows


def _slice_order(label: str) -> tuple[int, int, str]:
    if label == OVERALL_SLICE:
        return (0, 0, label)
    bucket_prefix = f"{features.ITEM_POPULARITY_BUCKET} "
    if label.startswith(bucket_prefix):
        name = label[len(bucket_prefix) :]
        names = features.POPULARITY_BUCKET_NAMES
        return (1, names.index(name) if name in names else len(names), label)
    return (2, 0, label)


def read_threshold_failures(evaluation_uri: str) -> dict[str, Any]:
    """Read which TFMA thresholds failed, one sentence per failure.

    Args:
      evaluation_uri: the Evaluator's evaluation artifact folder.

    Returns:
      {"validation_ok": bool or None, "rubber_stamp": bool, "failures": [sentence, ...]};
      validation_ok is None when the Evaluator wrote no validation result.
    """
    # load_validation_result fails an assert when the file is missing, so check first.
    if not glob.glob(os.path.join(evaluation_uri, f"{tfma_constants.VALIDATIONS_KEY}*")):
        return {"validation_ok": None, "rubber_stamp": False, "failures": []}
    validation = tfma.load_validation_result(evaluation_uri)

    failures = []
    for per_slice in validation.metric_validations_per_slice:
        label = _slice_label(_slice_key_tuple(per_slice.slice_key))
        failures += [f"{label}: {describe_failure(failure)}" for failure in per_slice.failures]
    for missing in validation.missing_slices:
        failures.append(f"slice {missing} has no examples in the eval split")
    return {
        "validation_ok": validation.validation_ok,
        "rubber_stamp": validation.rubber_stamp,
        "failures": failures,
    }


def _slice_key_tuple(slice_key) -> tuple:
    items = []
    for single in slice_key.single_slice_keys:
        kind = single.WhichOneof("kind")
        items.append((single.column, getattr(single, kind) if kind else ""))
    return tuple(items)


def describe_failure(failure) -> str:
    """Describe one failed TFMA threshold (`MetricValidationsPerSlice.failures` entry).

    Returns:
      E.g. "auc 0.4743 is below the lower bound 0.55", or
      "auc change -0.0300 against the baseline is below the allowed absolute change -0.01".
    """
    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        allowed = []
        if change.HasField("absolute"):
            allowed.append(f"absolute change {change.absolute.value:g}")
        if change.HasField("relative"):
            allowed.append(f"relative change {change.relative.value:g}")
        higher_is_better = change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
        side = "below" if higher_is_better else "above"
        return (
            f"{name} change {value:+.4f} against the baseline is {side} the allowed "
            f"{' and '.join(allowed) or 'change'}"
        )
    bounds = threshold.value_threshold
    if bounds.HasField("lower_bound") and value < bounds.lower_bound.value:
        return f"{name} {value:.4f} is below the lower bound {bounds.lower_bound.value:g}"
    if bounds.HasField("upper_bound") and value > bounds.upper_bound.value:
        return f"{name} {value:.4f} is above the upper bound {bounds.upper_bound.value:g}"
    threshold_text = text_format.MessageToString(threshold, as_one_line=True)
    return f"{name} {value:.4f} failed the threshold {threshold_text}"


def _ranking_reason(blessed: bool, baseline_uri: str | None, validation: dict) -> str:
    if validation["validation_ok"] is None:
        return "the Evaluator wrote no validation result"
    comparison = (
        f"change thresholds against the baseline {baseline_uri}"
        if baseline_uri
        else "no blessed baseline, so the value thresholds decide"
    )
    if blessed:
        return f"every threshold met ({comparison})"
    return f"{len(validation['failures'])} threshold checks failed ({comparison})"


# ---------------------------------------------------------------------------
# Serving validation and push
# ---------------------------------------------------------------------------


def _serving_section(config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun]) -> dict:
    blessing = _artifact(runs, training.SERVING_VALIDATOR, "blessing")
    if blessing is None:
        return _not_run(config, runs, training.SERVING_VALIDATOR)
    return {
        "blessed": bool(_property(blessing, push.BLESSED_PROPERTY)),
        "reason": _property(blessing, push.REASON_PROPERTY),
        "execution": _state_note(runs, training.SERVING_VALIDATOR),
    }


def _push_section(config: PipelineConfig, runs: dict[str, run_artifacts.NodeRun]) -> dict:
    if _artifact(runs, training.PUSHER, "pushed_ranking") is None:
        return _not_run(config, runs, training.PUSHER)
    section = {}
    for name, key in (
        (features.RANKING_MODEL_NAME, "pushed_ranking"),
        (features.RETRIEVAL_MODEL_NAME, "pushed_retrieval"),
    ):
        pushed = _artifact(runs, training.PUSHER, key)
        if pushed is None:
            section[name] = f"not pushed: the pusher recorded no {key} output"
        elif _property(pushed, "pushed"):
            section[name] = _property(pushed, "pushed_destination")
        else:
            section[name] = f"not pushed: {_property(pushed, push.REASON_PROPERTY)}"
    return section


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def draw_plots(report: RunReport, folder: str) -> dict[str, str]:
    """Draw the report's PNG plots into `folder` from the report's own numbers.

    A plot whose data this run lacks is not drawn, and a file of that name left
    by an earlier run is deleted, so every PNG in `folder` belongs to this run.

    Args:
      report: a report from `full_report`.
      folder: where RECALL_PLOT and AUC_PLOT are written.

    Returns:
      Plot title to its path, or to "not drawn: <reason>" when its data is missing.
    """
    os.makedirs(folder, exist_ok=True)
    recall_path = os.path.join(folder, RECALL_PLOT)
    auc_path = os.path.join(folder, AUC_PLOT)
    for path in (recall_path, auc_path):
        if os.path.exists(path):
            os.remove(path)

    drawn = {}
    stage1 = report.sections.get(STAGE1, {})
    if stage1.get("epochs"):
        rows = stage1["epochs"]
        recall_columns = [column for column in rows[0] if column.startswith("recall@")]
        drawn[RECALL_PLOT_TITLE] = plots.plot_recall_by_epoch(
            [row["epoch"] for row in rows],
            {column: [row[column] for row in rows] for column in recall_columns},
            recall_path,
        )
    else:
        drawn[RECALL_PLOT_TITLE] = f"not drawn: Stage I {_missing(stage1)}"

    stage2 = report.sections.get(STAGE2, {})
    if stage2.get("slices"):
        names, candidate, baseline = _bucket_series(stage2["slices"])
        drawn[AUC_PLOT_TITLE] = plots.plot_auc_by_bucket(names, candidate, baseline, auc_path)
    else:
        drawn[AUC_PLOT_TITLE] = f"not drawn: Stage II {_missing(stage2)}"
    return drawn


def _missing(section: dict) -> str:
    return f"was {NOT_RUN}" if NOT_RUN in section else "has no metrics"


def _bucket_series(rows: list[dict]) -> tuple[list[str], list, list | None]:
    by_slice = {row["slice"]: row for row in rows}
    names = list(features.POPULARITY_BUCKET_NAMES)
    bucket_rows = [by_slice.get(f"{features.ITEM_POPULARITY_BUCKET} {name}", {}) for name in names]
    candidate = [row.get("AUC") for row in bucket_rows]
    has_baseline = any("baseline AUC" in row for row in rows)
    baseline = [row.get("baseline AUC") for row in bucket_rows] if has_baseline else None
    return names, candidate, baseline
