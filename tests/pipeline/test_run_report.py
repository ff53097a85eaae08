"""The run report: text formatting, "not run" reasons, and the report of real runs.

The end-to-end tests share one module fixture that runs the whole pipeline four
times on a 1,763-row CSV log (2 Stage I epochs, 20 Stage II steps), each run
reusing the cached components of the one before:

  first         lenient ranking thresholds: both models blessed and pushed, no baseline
  baseline      the same again: the Evaluator compares with the first run's model
  strict_gate   AUC must reach 0.99 and rise by 0.1: the Evaluator does not bless
  gate_failed   retrieval floor 1.0: the gate does not bless, Stage II is skipped
  skip_stage1   --skip-stage1: Stage II warm-starts from the latest blessed Stage I model

Each run's report, JSON and PNGs are copied aside before the next run
overwrites them. Every value is checked against the artifacts read without the
report's code (JSON, TFMA, hashlib, the serving folder).
"""

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2

from tfx_pipeline import local_runner, run_artifacts, run_report, training
from tfx_pipeline.config import PipelineConfig
from tfx_pipeline.evaluation import RankingGateConfig
from transforms import features, readers

CASES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "cases"
LOG_NAME = "partial_last_batch.csv"
EPOCHS = 2
EVAL_ROWS = 176  # 10% of 1,763 rows in time order, as the ingestion counts record.

# Low enough that the 20-step Stage II model is blessed on this small log.
LENIENT_RANKING_GATE = RankingGateConfig(
    min_auc=0.0, max_log_loss=100.0, max_auc_drop=0.5, max_log_loss_rise=10.0
)
# Fails one value and one change threshold: a negative drop is a required rise.
STRICT_RANKING_GATE = dataclasses.replace(LENIENT_RANKING_GATE, min_auc=0.99, max_auc_drop=-0.1)


# ---------------------------------------------------------------------------
# Unit tests: formatting and "not run" reasons, no pipeline run
# ---------------------------------------------------------------------------


def test_format_table_aligns_columns():
    rows = [
        {"epoch": 1, "loss": 2.5, "recall@10": 0.125},
        {"epoch": 12, "loss": None, "recall@10": 0.03125},
    ]

    lines = run_report.format_table(rows, indent=2)

    # Numbers are right-aligned to the widest of header and cells: "epoch" is 5 wide,
    # "2.5000" 6 and "recall@10" 9. None prints "-", and 0.03125 rounds to 0.0312.
    assert lines == [
        "  epoch    loss  recall@10",
        "      1  2.5000     0.1250",
        "     12       -     0.0312",
    ]


def test_text_of_hand_made_report():
    report = run_report.RunReport()
    report.add(
        "provenance", {"data": "synthetic", "data checksum": {"synthetic spec": "synthetic"}}
    )
    report.add(
        "stage I",
        {"epochs": [{"epoch": 1, "recall@10": 0.5}], "slice": [{"slice": "0", "n": 3}]},
    )
    report.add("stage II", {"not run": "the retrieval gate did not bless the Stage I model"})
    report.add("push", {"ranking": "not pushed: no model", "empty": {}, "list": [1, 2]})
    report.add("gate", {"failed thresholds": ["overall: auc 0.4 is low", "overall: loss"]})

    assert report.to_text() == (
        "provenance:\n"
        "  data: synthetic\n"
        "  data checksum:\n"
        "    synthetic spec: synthetic\n"
        "stage I:\n"
        "  epochs:\n"
        "    epoch  recall@10\n"
        "        1     0.5000\n"
        "  slice:\n"
        "    slice  n\n"
        "    0      3\n"
        "stage II:\n"
        "  not run: the retrieval gate did not bless the Stage I model\n"
        "push:\n"
        "  ranking: not pushed: no model\n"
        "  empty: {}\n"
        "  list: [1, 2]\n"
        "gate:\n"
        "  failed thresholds:\n"
        "    - overall: auc 0.4 is low\n"
        "    - overall: loss\n"
    )


def test_report_json_round_trips(tmp_path):
    report = run_report.RunReport()
    report.add("stage I", {"epochs": [{"epoch": 1, "loss": 0.25}], "model": "/m"})
    report.add("stage II", {"slices": [{"slice": "overall", "calibration": math.nan}]})

    json_path, text_path = report.write(str(tmp_path))

    with open(json_path, encoding="utf-8") as file:
        written = json.load(file)
    assert written["stage I"] == report.sections["stage I"]
    # Strict JSON has no NaN, so it is written as null.
    assert written["stage II"] == {"slices": [{"slice": "overall", "calibration": None}]}
    with open(text_path, encoding="utf-8") as file:
        assert file.read() == report.to_text()


def _artifact(uri: str, **properties) -> metadata_store_pb2.Artifact:
    artifact = metadata_store_pb2.Artifact(uri=uri)
    for name, value in properties.items():
        field = "int_value" if isinstance(value, int) else "string_value"
        setattr(artifact.custom_properties[name], field, value)
    return artifact


def _write_history(model_uri: pathlib.Path) -> None:
    folder = model_uri / "Format-Serving"
    folder.mkdir(parents=True)
    history = {
        "epochs": [{"epoch": 1, "loss": 3.0, "eval_loss": 2.0, "recall@10": 0.5}],
        "final": {"recall@10": 0.5, "eval_positives/popularity_bucket_0": 0},
        "recall_ks": [10],
        "popularity_bucket_names": ["0"],
    }
    (folder / features.STAGE1_HISTORY_FILE).write_text(json.dumps(history))


def test_remove_report_deletes_earlier_files(tmp_path):
    names = (run_report.REPORT_JSON, run_report.REPORT_TEXT, run_report.RECALL_PLOT)
    for name in (*names, "other.txt"):
        (tmp_path / name).write_text("x", encoding="utf-8")

    removed = run_report.remove_report(str(tmp_path))

    assert sorted(removed) == sorted(str(tmp_path / name) for name in names)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.txt"]
    assert run_report.remove_report(str(tmp_path)) == []


def test_gate_rejection_reported_as_not_run(tmp_path):
    _write_history(tmp_path / "model")
    runs = {
        training.STAGE1_TRAINER: run_artifacts.NodeRun(
            training.STAGE1_TRAINER, "COMPLETE", {"model": [_artifact(str(tmp_path / "model"))]}
        ),
        training.RETRIEVAL_GATE: run_artifacts.NodeRun(
            training.RETRIEVAL_GATE,
            "COMPLETE",
            {"blessing": [_artifact("/b", blessed=0, blessing_message="recall@50 0.1 is low")]},
        ),
    }

    report = run_report.build_report(PipelineConfig(), "run-1", runs)

    reason = (
        "the retrieval gate did not bless the Stage I model (recall@50 0.1 is low), "
        "so the run stopped before Stage II"
    )
    stage2_reason = f"Stage II did not run (see '{run_report.STAGE2}')"
    assert report.sections[run_report.STAGE2] == {"not run": reason}
    assert report.sections[run_report.RANKING_GATE] == {"not run": reason}
    assert report.sections[run_report.SERVING_VALIDATION] == {"not run": stage2_reason}
    assert report.sections[run_report.PUSH] == {"not run": reason}
    assert report.sections[run_report.RETRIEVAL_GATE]["blessed"] is False
    # Bucket 0 has no eval positives, so its recall is undefined, not 0.
    slices = report.sections[run_report.STAGE1]["last epoch by slice"]
    assert slices[0] == {
        "slice": "item_popularity_bucket 0",
        "eval positives": 0,
        "recall@10": None,
    }


def test_skipped_stage1_reported_as_not_run(tmp_path):
    config = PipelineConfig()
    config = dataclasses.replace(
        config, training=dataclasses.replace(config.training, skip_stage1=True)
    )

    report = run_report.build_report(config, "run-1", {})

    reason = (
        "Stage I was skipped (--skip-stage1), so Stage II warm-started from the latest blessed "
        "Stage I model of an earlier run"
    )
    assert report.sections[run_report.STAGE1] == {"not run": reason}
    assert report.sections[run_report.RETRIEVAL_GATE] == {"not run": reason}
    plots = run_report.draw_plots(report, str(tmp_path))
    assert plots[run_report.RECALL_PLOT_TITLE] == "not drawn: Stage I was not run"


def test_first_half_only_reported_as_not_run():
    config = dataclasses.replace(PipelineConfig(), first_half_only=True)

    report = run_report.build_report(config, "run-1", {})

    reason = {"not run": "--first-half-only stops the run after Transform"}
    for section in (run_report.STAGE1, run_report.STAGE2, run_report.PUSH):
        assert report.sections[section] == reason, section


def test_describe_failure_of_value_and_change_thresholds():
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.proto import validation_result_pb2

    value_failure = validation_result_pb2.ValidationFailure()
    value_failure.metric_key.name = "auc"
    value_failure.metric_threshold.value_threshold.lower_bound.value = 0.55
    value_failure.metric_value.double_value.value = 0.47433
    change_failure = validation_result_pb2.ValidationFailure()
    change_failure.metric_key.name = "binary_crossentropy"
    change_failure.metric_threshold.change_threshold.direction = (
        tfma.MetricDirection.LOWER_IS_BETTER
    )
    change_failure.metric_threshold.change_threshold.absolute.value = 0.02
    change_failure.metric_value.double_value.value = 0.05

    assert run_report.describe_failure(value_failure) == "auc 0.4743 is below the lower bound 0.55"
    assert run_report.describe_failure(change_failure) == (
        "binary_crossentropy change +0.0500 against the baseline is above the allowed "
        "absolute change 0.02"
    )


# ---------------------------------------------------------------------------
# End-to-end: four real runs
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Snapshot:
    """One run's report and the copies of the files it wrote."""

    config: PipelineConfig
    report: run_report.RunReport
    folder: pathlib.Path
    # The latest Evaluator output right after the run, found without the report's code.
    evaluation_uri: str | None


def _snapshot(config: PipelineConfig, name: str, root: pathlib.Path) -> Snapshot:
    local_runner.run(config)
    evaluations = local_runner.latest_output_uris(config, training.EVALUATOR, "evaluation")
    report, _ = run_report.write_full_report(config)
    folder = root / "snapshots" / name
    folder.mkdir(parents=True)
    for file_name in (run_report.REPORT_JSON, run_report.RECALL_PLOT, run_report.AUC_PLOT):
        source = os.path.join(config.dataset_dir, file_name)
        if os.path.exists(source):
            shutil.copy(source, folder / file_name)
    return Snapshot(config, report, folder, evaluations[0] if evaluations else None)


def _with_training(config: PipelineConfig, **changes) -> PipelineConfig:
    return dataclasses.replace(config, training=dataclasses.replace(config.training, **changes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Snapshot]:
    if not (CASES / LOG_NAME).is_file():
        pytest.skip(f"the bad-input cases are not at {CASES}")
    root = tmp_path_factory.mktemp("run-report")
    # A copy keeps the checksum test independent of the shared folder. Its name has a
    # dot, so the pipeline name does too ("idpt-partial_last_batch.csv").
    log = root / LOG_NAME
    shutil.copy(CASES / LOG_NAME, log)

    from tfx_pipeline import cli

    args = cli._build_parser().parse_args(
        [
            "run",
            f"--data={log}",
            "--format=csv",
            f"--epochs={EPOCHS}",
            "--stage2-steps=20",
            "--embedding-dim=16",
            f"--output={root / 'runs'}",
            "--beam-arg=--direct_running_mode=in_memory",
            "--beam-arg=--direct_num_workers=1",
        ]
    )
    first = _with_training(cli.config_from_args(args), ranking_gate=LENIENT_RANKING_GATE)
    gate = first.training.retrieval_gate
    snapshots = {"first": _snapshot(first, "first", root)}
    snapshots["baseline"] = _snapshot(first, "baseline", root)
    strict = _with_training(first, ranking_gate=STRICT_RANKING_GATE)
    snapshots["strict_gate"] = _snapshot(strict, "strict_gate", root)
    gate_failed = _with_training(first, retrieval_gate=dataclasses.replace(gate, floor=1.0))
    snapshots["gate_failed"] = _snapshot(gate_failed, "gate_failed", root)
    snapshots["skip_stage1"] = _snapshot(
        _with_training(first, skip_stage1=True), "skip_stage1", root
    )
    return snapshots


def _section(snapshot: Snapshot, name: str) -> dict:
    return snapshot.report.sections[name]


@pytest.mark.e2e
def test_checksum_equals_sha256_of_log(runs):
    expected = hashlib.sha256(pathlib.Path(runs["first"].config.data).read_bytes()).hexdigest()

    checksum = _section(runs["first"], run_report.PROVENANCE)["data checksum"]

    assert checksum == {"sha256": expected, "files": 1}


@pytest.mark.e2e
def test_provenance_versions_and_config(runs):
    import tensorflow as tf
    import tfx

    snapshot = runs["first"]
    provenance = _section(snapshot, run_report.PROVENANCE)
    with open(snapshot.folder / run_report.REPORT_JSON, encoding="utf-8") as file:
        written = json.load(file)

    assert provenance["package versions"]["tensorflow"] == tf.__version__
    assert provenance["package versions"]["tfx"] == tfx.__version__
    assert written[run_report.CONFIG] == json.loads(json.dumps(snapshot.config.to_dict()))
    assert written[run_report.CONFIG]["stage1"]["epochs"] == EPOCHS


@pytest.mark.e2e
def test_stage1_epochs_equal_history(runs):
    snapshot = runs["first"]
    stage1 = _section(snapshot, run_report.STAGE1)
    history_path = os.path.join(stage1["model"], "Format-Serving", features.STAGE1_HISTORY_FILE)
    with open(history_path, encoding="utf-8") as file:
        history = json.load(file)

    assert len(stage1["epochs"]) == EPOCHS == len(history["epochs"])
    for row, record in zip(stage1["epochs"], history["epochs"], strict=True):
        assert row["epoch"] == record["epoch"]
        assert row["loss"] == record["loss"]
        assert row["eval_loss"] == record["eval_loss"]
        for k in (10, 50, 100):
            assert row[f"recall@{k}"] == record[f"recall@{k}"]
    bucket_positives = sum(
        row["eval positives"]
        for row in stage1["last epoch by slice"]
        if row["slice"].startswith(features.ITEM_POPULARITY_BUCKET)
    )
    # Every eval positive falls in exactly one bucket.
    assert bucket_positives == history["final"]["eval_positives"]


def _tfma_slice_label(slice_key: tuple) -> str:
    if not slice_key:
        return "overall"
    ((column, value),) = slice_key
    if column == features.ITEM_POPULARITY_BUCKET:
        return f"{column} {features.POPULARITY_BUCKET_NAMES[value]}"
    return f"{column} {'returning' if value == 1 else 'new'}"


def _close(actual: float | None, expected: float | None) -> bool:
    if actual is None or expected is None:
        return actual is expected
    return actual == pytest.approx(expected)


@pytest.mark.e2e
def test_stage2_metrics_equal_tfma_result(runs):
    import tensorflow_model_analysis as tfma

    snapshot = runs["first"]
    stage2 = _section(snapshot, run_report.STAGE2)
    rows = {row["slice"]: row for row in stage2["slices"]}

    # Without a baseline the Evaluator writes one model's metrics, so no model name is needed.
    result = tfma.load_eval_result(snapshot.evaluation_uri)

    assert stage2["evaluation (tfma.load_eval_result)"] == snapshot.evaluation_uri

    assert len(rows) == len(result.slicing_metrics)
    for slice_key, values in result.slicing_metrics:
        metrics = values[""][""]
        row = rows[_tfma_slice_label(slice_key)]
        one_class = metrics["mean_label"]["doubleValue"] in (0.0, 1.0)
        expected_auc = None if one_class else metrics["auc"]["doubleValue"]
        assert _close(row["AUC"], expected_auc), slice_key
        assert _close(row["log loss"], metrics["binary_crossentropy"]["doubleValue"]), slice_key
        assert row["examples"] == metrics["example_count"]["doubleValue"], slice_key
        assert "baseline AUC" not in row

    assert rows["overall"]["examples"] == EVAL_ROWS
    assert _section(snapshot, "splits")["rows"][features.EVAL_SPLIT] == EVAL_ROWS
    bucket_rows = [row for label, row in rows.items() if "popularity" in label]
    user_rows = [row for label, row in rows.items() if features.USER_IS_RETURNING in label]
    # Each eval example falls in exactly one bucket and one user group.
    assert sum(row["examples"] for row in bucket_rows) == EVAL_ROWS
    assert sum(row["examples"] for row in user_rows) == EVAL_ROWS


@pytest.mark.e2e
def test_first_run_blessed_and_pushed(runs):
    snapshot = runs["first"]
    gate = _section(snapshot, run_report.RANKING_GATE)
    pushed = _section(snapshot, run_report.PUSH)
    serving_dir = os.path.join(snapshot.config.dataset_dir, "serving")

    assert gate["blessed"] is True
    assert (
        gate["reason"]
        == "every threshold met (no blessed baseline, so the value thresholds decide)"
    )
    assert gate["failed thresholds"] == "none"
    assert _section(snapshot, run_report.RETRIEVAL_GATE)["blessed"] is True
    assert _section(snapshot, run_report.SERVING_VALIDATION)["blessed"] is True
    for name in (features.RANKING_MODEL_NAME, features.RETRIEVAL_MODEL_NAME):
        assert os.path.dirname(pushed[name]) == os.path.join(serving_dir, name)
        assert os.path.isfile(os.path.join(pushed[name], "saved_model.pb"))


@pytest.mark.e2e
def test_baseline_run_compares_with_first_model(runs):
    first = {row["slice"]: row for row in _section(runs["first"], run_report.STAGE2)["slices"]}
    snapshot = runs["baseline"]
    stage2 = _section(snapshot, run_report.STAGE2)
    provenance = _section(snapshot, run_report.PROVENANCE)

    assert stage2["baseline model"] == _section(runs["first"], run_report.STAGE2)["model"]
    # The baseline is the first run's model on the same eval rows, so its metrics are
    # the first run's candidate metrics.
    for row in stage2["slices"]:
        assert _close(row["baseline AUC"], first[row["slice"]]["AUC"]), row["slice"]
        assert _close(row["baseline log loss"], first[row["slice"]]["log loss"]), row["slice"]
    assert (
        "change thresholds against the baseline"
        in _section(snapshot, run_report.RANKING_GATE)["reason"]
    )
    assert _section(snapshot, run_report.STAGE1)["execution"] == "reused from the cache"
    assert "Transform" in provenance["components reused from the cache"]

    # The cached Stage I model is the one the first run pushed, so it is not pushed again.
    first_version = _section(runs["first"], run_report.PUSH)[features.RETRIEVAL_MODEL_NAME]
    assert _section(snapshot, run_report.PUSH)[features.RETRIEVAL_MODEL_NAME] == (
        f"not pushed: version {os.path.basename(first_version)} already serves it"
    )


@pytest.mark.e2e
def test_strict_gate_lists_failed_thresholds(runs):
    import tensorflow_model_analysis as tfma

    snapshot = runs["strict_gate"]
    gate = _section(snapshot, run_report.RANKING_GATE)
    overall = _section(snapshot, run_report.STAGE2)["slices"][0]
    validation = tfma.load_validation_result(snapshot.evaluation_uri)
    (per_slice,) = validation.metric_validations_per_slice

    assert gate["blessed"] is False
    assert len(per_slice.failures) == 2
    assert gate["failed thresholds"] == [
        f"overall: auc {overall['AUC']:.4f} is below the lower bound 0.99",
        f"overall: auc change {overall['AUC'] - overall['baseline AUC']:+.4f} against the "
        "baseline is below the allowed absolute change 0.1",
    ]
    assert gate["reason"].startswith("2 threshold checks failed (change thresholds against")
    assert _section(snapshot, run_report.PUSH)[features.RANKING_MODEL_NAME] == (
        "not pushed: the ranking model was not blessed by its gate"
    )


@pytest.mark.e2e
def test_gate_failure_skips_stage2_sections(runs):
    snapshot = runs["gate_failed"]
    gate = _section(snapshot, run_report.RETRIEVAL_GATE)
    plots = _section(snapshot, run_report.PLOTS)

    assert gate["blessed"] is False
    assert gate["reason"].endswith("is not above the floor 1.0000")
    reason = (
        f"the retrieval gate did not bless the Stage I model ({gate['reason']}), "
        "so the run stopped before Stage II"
    )
    assert _section(snapshot, run_report.STAGE2) == {"not run": reason}
    assert _section(snapshot, run_report.PUSH) == {"not run": reason}
    assert plots[run_report.AUC_PLOT_TITLE] == "not drawn: Stage II was not run"
    # The earlier runs' AUC plot was deleted, so no stale plot sat beside this report.
    assert not (snapshot.folder / run_report.AUC_PLOT).exists()
    assert (snapshot.folder / run_report.RECALL_PLOT).exists()


@pytest.mark.e2e
def test_skip_stage1_reports_stage1_not_run(runs):
    snapshot = runs["skip_stage1"]
    pushed = _section(snapshot, run_report.PUSH)

    assert run_report.NOT_RUN in _section(snapshot, run_report.STAGE1)
    assert "--skip-stage1" in _section(snapshot, run_report.STAGE1)[run_report.NOT_RUN]
    assert pushed[features.RETRIEVAL_MODEL_NAME] == (
        "not pushed: no new retrieval model in this run"
    )
    assert "slices" in _section(snapshot, run_report.STAGE2)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["first", "baseline"])
def test_plots_are_pngs_of_figure_size(runs, name):
    from matplotlib import image

    snapshot = runs[name]
    plots = _section(snapshot, run_report.PLOTS)

    for title, file_name in (
        (run_report.RECALL_PLOT_TITLE, run_report.RECALL_PLOT),
        (run_report.AUC_PLOT_TITLE, run_report.AUC_PLOT),
    ):
        assert plots[title] == os.path.join(snapshot.config.dataset_dir, file_name)
        copy = snapshot.folder / file_name
        assert copy.stat().st_size > 0
        # 7.0 x 4.2 inches at 100 dpi is 700 x 420 pixels, RGBA.
        assert image.imread(copy).shape == (420, 700, 4)


def test_plots_reject_series_of_wrong_length(tmp_path):
    from tfx_pipeline import plots

    with pytest.raises(ValueError, match=r"^baseline has 1 AUCs for 2 buckets: give one per"):
        plots.plot_auc_by_bucket(["0", "1"], [0.5, 0.6], [0.5], str(tmp_path / "auc.png"))
    with pytest.raises(ValueError, match=r"^recall@10 has 3 values for 2 epochs: give one per"):
        plots.plot_recall_by_epoch([1, 2], {"recall@10": [0.1, 0.2, 0.3]}, str(tmp_path / "r.png"))


def test_synthetic_checksum_is_the_spec():
    assert run_report.data_checksum("synthetic:rows=10", readers.SYNTHETIC) == {
        "synthetic spec": "synthetic:rows=10"
    }
