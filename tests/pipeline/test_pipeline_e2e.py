"""The whole pipeline through `idpt run`: a killed run resumes, and the gates decide the push.

The module's first run (the shop's weeks 0-3) is killed during Stage I and rerun. It must
end blessed and pushed, because the later tests compare against it. Each later test copies
that run's dataset folder (ML Metadata store, checkpoints, serving folder) and adds one run:

  * the same rows with the train labels shuffled: the ranking model is not blessed and not
    pushed;
  * the following weeks 4-7 with Stage I skipped: Stage II warm-starts from the first run's
    Stage I model across the grown vocabularies, and the Evaluator compares it with the
    first run's ranking model;
  * the following weeks 4-7 with Stage I: the retrieval gate compares the new Stage I model
    with the first run's.

The copied store keeps pointing at the first run's artifacts, which stay in place for the
whole module. Sizes are small (10,000 rows, a few epochs, 60 Stage II steps, in-memory Beam).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
import shutil
import signal

import pytest
import tensorflow_model_analysis as tfma
from pipeline_e2e_runs import (
    DATASET,
    RunRecord,
    Settings,
    Window,
    checkpoint_epoch,
    int_property,
    kill_group,
    read_run,
    run,
    run_command,
    run_ids,
    start,
    versions,
    wait_for_checkpoint,
    write_log,
    write_train_labels_shuffled,
)

from tfx_pipeline import training
from tfx_pipeline.components import push
from tfx_pipeline.components import retrieval_gate as gate
from tfx_pipeline.evaluation import RankingGateConfig
from transforms import features

pytestmark = pytest.mark.e2e

FIRST_WINDOW = Window(start_week=0)
NEWER_WINDOW = Window(start_week=4)
# Small Stage I batches give about 70 steps per epoch, so the epochs after the first
# checkpoint outlast the 50 ms polling that detects it.
SETTINGS = Settings(epochs=5, stage1_batch_size=32, stage2_steps=60, min_auc=0.55)
SHUFFLE_SEED = 13
CHECKPOINT_TIMEOUT_S = 240

# The components Stage I depends on, so they all finished before the kill.
UPSTREAM_NODES = (
    "LogIngestion",
    "StatisticsGen",
    "SchemaGen",
    "SchemaCurator",
    "ExampleValidator",
    "AnomaliesGate",
    "Transform",
    training.TRAINING_SETTINGS,
)
EPOCH_LINE = re.compile(r"Stage I epoch (\d+)/(\d+): (\{.*\})$", re.MULTILINE)
AUC = "auc"
LOG_LOSS = "binary_crossentropy"


@dataclasses.dataclass(frozen=True)
class FirstRun:
    """The killed and resumed first run.

    Attributes:
      root: the module's temporary folder.
      output: `--output` of the run; the dataset folder is output/DATASET.
      killed_returncode: the killed process's exit status.
      killed_epoch: the epoch of the latest Stage I checkpoint when the run was killed.
      killed_console, resumed_console: the console output of both processes.
      killed, resumed: what ML Metadata recorded for each.
    """

    root: pathlib.Path
    output: pathlib.Path
    killed_returncode: int
    killed_epoch: int
    killed_console: str
    resumed_console: str
    killed: RunRecord
    resumed: RunRecord

    @property
    def serving_dir(self) -> pathlib.Path:
        """The TF Serving model base folder the pusher writes into."""
        return self.output / DATASET / "serving"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    root = tmp_path_factory.mktemp("pipeline-e2e")
    output = root / "runs"
    log = write_log(FIRST_WINDOW, root / "weeks-0-3.csv")
    command = run_command(log, FIRST_WINDOW, output, SETTINGS)

    process = start(command, root / "killed.txt")
    try:
        checkpoints = wait_for_checkpoint(
            output / DATASET / "stage1-checkpoints", process, CHECKPOINT_TIMEOUT_S
        )
    finally:
        if process.poll() is None:
            kill_group(process)
    killed_epoch = checkpoint_epoch(checkpoints)
    killed_id = run_ids(output)[-1]

    resumed_console = run(command, root / "resumed.txt")
    return FirstRun(
        root=root,
        output=output,
        killed_returncode=process.returncode,
        killed_epoch=killed_epoch,
        killed_console=(root / "killed.txt").read_text(encoding="utf-8"),
        resumed_console=resumed_console,
        killed=read_run(output, killed_id),
        resumed=read_run(output),
    )


def _logged_epochs(console: str) -> list[dict]:
    return [ast.literal_eval(match.group(3)) for match in EPOCH_LINE.finditer(console)]


def test_killed_run_reuses_cache(first_run):
    assert first_run.killed_returncode == -signal.SIGKILL, (
        "the first run ended before the kill: give Stage I more epochs or smaller batches"
    )
    # The kill landed inside the Stage I Trainer: its execution never completed.
    assert first_run.killed.state(training.STAGE1_TRAINER) == "RUNNING"
    assert first_run.resumed.run_id != first_run.killed.run_id

    for node_id in UPSTREAM_NODES:
        assert first_run.killed.state(node_id) == "COMPLETE", node_id
        assert first_run.resumed.state(node_id) == "CACHED", node_id
    for key in ("transformed_examples", "transform_graph"):
        assert first_run.resumed.output_uri("Transform", key) == first_run.killed.output_uri(
            "Transform", key
        )
    assert first_run.resumed.state(training.STAGE1_TRAINER) == "COMPLETE"


def test_killed_stage1_resumes_after_last_epoch(first_run):
    killed_epoch = first_run.killed_epoch
    # At least one epoch was checkpointed, and the kill came before the last one.
    assert 1 <= killed_epoch < SETTINGS.epochs

    # The killed run logs an epoch after saving its checkpoint, so it logged at most
    # the checkpointed epochs. The rerun trains only the epochs after them.
    killed_records = _logged_epochs(first_run.killed_console)
    resumed_records = _logged_epochs(first_run.resumed_console)
    assert [record["epoch"] for record in killed_records] == list(range(1, len(killed_records) + 1))
    assert len(killed_records) <= killed_epoch
    assert [record["epoch"] for record in resumed_records] == list(
        range(killed_epoch + 1, SETTINGS.epochs + 1)
    )
    assert f"ckpt-{killed_epoch} after epoch {killed_epoch}" in first_run.resumed_console

    model_dir = pathlib.Path(first_run.resumed.output_uri(training.STAGE1_TRAINER, "model"))
    history = json.loads(
        (model_dir / push.SERVING_MODEL_FOLDER / features.STAGE1_HISTORY_FILE).read_text()
    )
    assert [record["epoch"] for record in history["epochs"]] == list(range(1, SETTINGS.epochs + 1))
    # The epochs before the kill come back from the checkpoint with the metrics the
    # killed run logged, and those after it are the rerun's.
    assert history["epochs"][: len(killed_records)] == killed_records
    assert history["epochs"][killed_epoch:] == resumed_records


def test_first_run_pushes_both_models(first_run):
    resumed = first_run.resumed
    assert int_property(resumed.output(training.RETRIEVAL_GATE, "blessing"), "blessed") == 1
    assert int_property(resumed.output(training.EVALUATOR, "blessing"), "blessed") == 1

    for key, name in (
        ("pushed_ranking", features.RANKING_MODEL_NAME),
        ("pushed_retrieval", features.RETRIEVAL_MODEL_NAME),
    ):
        pushed = resumed.output(training.PUSHER, key)
        assert int_property(pushed, "pushed") == 1, key
        (version,) = versions(first_run.serving_dir, name)
        destination = first_run.serving_dir / name / version
        assert pushed.custom_properties["pushed_destination"].string_value == str(destination)
        assert (destination / "saved_model.pb").is_file()
        assert (destination / features.WARMUP_FILE).is_file()


def _copy_first_run(first_run: FirstRun, name: str) -> pathlib.Path:
    output = first_run.root / name
    shutil.copytree(first_run.output, output)
    return output


def _overall_candidate_metrics(evaluation_uri: str) -> dict[tuple[str, bool], float]:
    """Return (metric name, is_diff) -> value of the candidate model on the whole eval split."""
    for metrics in tfma.load_metrics(evaluation_uri):
        if not metrics.slice_key.single_slice_keys:
            return {
                (item.key.name, item.key.is_diff): item.value.double_value.value
                for item in metrics.metric_keys_and_values
                if item.key.model_name == "candidate"
            }
    raise AssertionError(f"no overall slice in the metrics under {evaluation_uri}")


def _gate_passes(metrics: dict[tuple[str, bool], float], gate: RankingGateConfig) -> bool:
    """Apply the ranking gate's value and change thresholds by hand."""
    return (
        metrics[(AUC, False)] >= gate.min_auc
        and metrics[(LOG_LOSS, False)] <= gate.max_log_loss
        and metrics[(AUC, True)] >= -gate.max_auc_drop
        and metrics[(LOG_LOSS, True)] <= gate.max_log_loss_rise
    )


def test_shuffled_labels_not_blessed(first_run):
    output = _copy_first_run(first_run, "shuffled-runs")
    serving_dir = output / DATASET / "serving"
    ranking_versions = versions(serving_dir, features.RANKING_MODEL_NAME)
    log = first_run.root / "weeks-0-3-shuffled.csv"
    permuted = write_train_labels_shuffled(
        first_run.root / "weeks-0-3.csv", log, FIRST_WINDOW.train_end, SHUFFLE_SEED
    )
    # 10,000 rows spread evenly over 4 weeks, and train is weeks 0-2: 3 * 2,500 rows.
    assert permuted == 7_500

    run(
        run_command(log, FIRST_WINDOW, output, SETTINGS, "--skip-stage1"),
        first_run.root / "shuffled.txt",
    )
    record = read_run(output)
    first_ranking = first_run.resumed.output_uri(training.STAGE2_TRAINER, "model")
    assert record.inputs[training.EVALUATOR]["baseline_model"] == [first_ranking]

    assert int_property(record.output(training.EVALUATOR, "blessing"), "blessed") == 0
    evaluation = record.output_uri(training.EVALUATOR, "evaluation")
    assert not tfma.load_validation_result(evaluation).validation_ok
    metrics = _overall_candidate_metrics(evaluation)
    # Trained on shuffled labels, the model ranks the true eval labels at about chance,
    # far below the first run's model on the same rows.
    assert metrics[(AUC, True)] < -RankingGateConfig().max_auc_drop

    pushed = record.output(training.PUSHER, "pushed_ranking")
    assert int_property(pushed, "pushed") == 0
    assert pushed.custom_properties[push.REASON_PROPERTY].string_value == (
        "the ranking model was not blessed by its gate"
    )
    assert versions(serving_dir, features.RANKING_MODEL_NAME) == ranking_versions


def _read_tokens(path: pathlib.Path) -> set[str]:
    return set(path.read_text(encoding="utf-8").splitlines())


def test_newer_weeks_gated_against_first_run(first_run):
    output = _copy_first_run(first_run, "newer-runs")
    serving_dir = output / DATASET / "serving"
    ranking_versions = versions(serving_dir, features.RANKING_MODEL_NAME)
    log = write_log(NEWER_WINDOW, first_run.root / "weeks-4-7.csv")

    run(
        run_command(log, NEWER_WINDOW, output, SETTINGS, "--skip-stage1"),
        first_run.root / "newer.txt",
    )
    record = read_run(output)
    assert training.STAGE1_TRAINER not in record.nodes
    first_stage1 = first_run.resumed.output_uri(training.STAGE1_TRAINER, "model")
    first_ranking = first_run.resumed.output_uri(training.STAGE2_TRAINER, "model")
    assert record.inputs[training.STAGE2_TRAINER]["base_model"] == [first_stage1]
    assert record.inputs[training.EVALUATOR]["baseline_model"] == [first_ranking]

    blessed = int_property(record.output(training.EVALUATOR, "blessing"), "blessed")
    evaluation = record.output_uri(training.EVALUATOR, "evaluation")
    assert bool(blessed) == tfma.load_validation_result(evaluation).validation_ok
    metrics = _overall_candidate_metrics(evaluation)
    assert bool(blessed) == _gate_passes(metrics, RankingGateConfig(min_auc=SETTINGS.min_auc))

    pushed = record.output(training.PUSHER, "pushed_ranking")
    assert int_property(pushed, "pushed") == blessed
    new_versions = versions(serving_dir, features.RANKING_MODEL_NAME)
    assert len(new_versions) == len(ranking_versions) + blessed
    if blessed:
        destination = serving_dir / features.RANKING_MODEL_NAME / new_versions[-1]
        assert pushed.custom_properties["pushed_destination"].string_value == str(destination)

    # Warm start by token: the Stage I export's item tokens against the new item
    # vocabulary of this run's Transform.
    exported = _read_tokens(
        pathlib.Path(first_stage1)
        / push.SERVING_MODEL_FOLDER
        / features.EMBEDDING_EXPORT_DIR
        / features.ITEM_ID
        / features.EMBEDDING_TOKENS_FILE
    )
    vocabulary = _read_tokens(
        pathlib.Path(record.output_uri("Transform", "transform_graph"))
        / "transform_fn"
        / "assets"
        / features.vocabulary_name(features.ITEM_ID)
    )
    ranking_dir = pathlib.Path(record.output_uri(training.STAGE2_TRAINER, "model"))
    counts = json.loads(
        (ranking_dir / push.SERVING_MODEL_FOLDER / features.WARM_START_COUNTS_FILE).read_text()
    )
    item_counts = next(table for table in counts["tables"] if table["table"] == features.ITEM_ID)
    assert item_counts["copied"] == len(exported & vocabulary)
    assert item_counts["initialised"] == len(vocabulary - exported)
    assert item_counts["ignored"] == len(exported - vocabulary)

    # 300 items exist in week 0 and 15 arrive each week, so the first run's train weeks
    # 0-2 contain items i0..i329 at most. Every later item in this run's train weeks 4-6
    # is new and keeps its initial row.
    arrived_later = {token for token in vocabulary if int(token[1:]) >= 330}
    assert arrived_later
    assert arrived_later <= vocabulary - exported
    assert item_counts["copied"] > 0


def test_newer_stage1_gated_against_first_run(first_run):
    output = _copy_first_run(first_run, "newer-stage1-runs")
    log = write_log(NEWER_WINDOW, first_run.root / "weeks-4-7-stage1.csv")

    run(run_command(log, NEWER_WINDOW, output, SETTINGS), first_run.root / "newer-stage1.txt")
    record = read_run(output)
    first_stage1 = first_run.resumed.output_uri(training.STAGE1_TRAINER, "model")
    new_stage1 = record.output_uri(training.STAGE1_TRAINER, "model")
    assert new_stage1 != first_stage1
    assert record.inputs[training.RETRIEVAL_GATE]["baseline_model"] == [first_stage1]

    # The gate's decision follows from the recall each model recorded on its eval split.
    config = gate.RetrievalGateConfig()
    recall = gate.final_recall(new_stage1, config.recall_k)
    baseline_recall = gate.final_recall(first_stage1, config.recall_k)
    expected = gate.decide(recall, baseline_recall, config)
    blessing = record.output(training.RETRIEVAL_GATE, "blessing")
    properties = blessing.custom_properties
    assert int_property(blessing, push.BLESSED_PROPERTY) == int(expected.blessed)
    assert properties["baseline_model"].string_value == first_stage1
    assert properties["baseline_recall"].double_value == pytest.approx(baseline_recall)
    assert properties["blessing_message"].string_value == expected.reason
