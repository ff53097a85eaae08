"""Logs, `idpt run` subprocesses and ML Metadata look-ups for the end-to-end pipeline tests.

Every run goes through the real command line (`python -m tfx_pipeline.cli run`) in a
subprocess, with in-memory Beam and small trainers. So a test can kill a run the way a
crash would, then read what each run recorded in the dataset's ML Metadata store.

The logs are synthetic CSV files from `transforms.generator` with explicit time cut-offs:
a window of WEEKS weeks trains on all weeks but the last, evaluates on the first half of
the last week and tests on its second half.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
from ml_metadata.proto import metadata_store_pb2

from tfx_pipeline import run_artifacts
from transforms import features, generator

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DATASET = "shop"
PIPELINE_NAME = f"idpt-{DATASET}"

# Every run of one dataset shares the users and items of week 0, so a later window is the
# same shop's following weeks (new users and items arrive every week).
WEEKS = 4
ROWS = 10_000
USERS = 200
ITEMS = 300
SEED = 7
MAPPING = (
    "side=user_country",
    "side=user_device",
    "side=item_category",
    "side=item_price",
    "numeric=item_price",
)
BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
RUN_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Window:
    """One log of the shop: WEEKS weeks from `start_week`, with its time cut-offs.

    Attributes:
      start_week: first week of the window (0 is the generator's EPOCH_START week).
    """

    start_week: int

    @property
    def spec(self) -> generator.SyntheticSpec:
        """The generator spec of the window's rows."""
        return generator.SyntheticSpec(
            rows=ROWS, seed=SEED, weeks=WEEKS, start_week=self.start_week, users=USERS, items=ITEMS
        )

    @property
    def train_end(self) -> int:
        """T1: the start of the window's last week."""
        return generator.EPOCH_START + (self.start_week + WEEKS - 1) * generator.SECONDS_PER_WEEK

    @property
    def eval_end(self) -> int:
        """T2: the middle of the window's last week."""
        return self.train_end + generator.SECONDS_PER_WEEK // 2


@dataclasses.dataclass(frozen=True)
class Settings:
    """The `idpt run` options that size a run.

    Attributes:
      epochs: Stage I epochs.
      stage1_batch_size: Stage I batch size. Small batches make an epoch last long
        enough to kill the run during it.
      stage2_steps: Stage II batches.
      embedding_dim: width of the id tables.
      min_auc: ranking gate floor on eval AUC.
    """

    epochs: int = 2
    stage1_batch_size: int = 256
    stage2_steps: int = 60
    embedding_dim: int = 16
    min_auc: float = 0.55


def write_log(window: Window, path: pathlib.Path) -> pathlib.Path:
    """Write the window's rows as a CSV file with canonical column names."""
    generator.write_csv(window.spec, str(path))
    return path


def write_train_labels_shuffled(
    source: pathlib.Path, target: pathlib.Path, train_end: int, seed: int
) -> int:
    """Copy a CSV log with the labels of its train rows (timestamp < T1) permuted.

    Eval and test rows keep their labels, so the Evaluator measures the model trained on
    shuffled labels, and the baseline, against the true labels.

    Returns:
      The number of train rows whose label was permuted.
    """
    with open(source, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    train = [row for row in rows if int(row[features.TIMESTAMP]) < train_end]
    labels = [row[features.LABEL] for row in train]
    permutation = np.random.default_rng(seed).permutation(len(labels))
    for row, index in zip(train, permutation, strict=True):
        row[features.LABEL] = labels[index]

    with open(target, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(train)


def run_command(
    log: pathlib.Path, window: Window, output: pathlib.Path, settings: Settings, *extra: str
) -> list[str]:
    """Return the `idpt run` command line of one run of the shop dataset."""
    command = [
        sys.executable, "-m", "tfx_pipeline.cli", "run",
        "--data", str(log),
        "--format", "csv",
        "--mapping", *MAPPING,
        "--dataset", DATASET,
        "--output", str(output),
        "--train-end", str(window.train_end),
        "--eval-end", str(window.eval_end),
        "--epochs", str(settings.epochs),
        "--stage1-batch-size", str(settings.stage1_batch_size),
        "--stage2-steps", str(settings.stage2_steps),
        "--embedding-dim", str(settings.embedding_dim),
        "--min-auc", str(settings.min_auc),
    ]  # fmt: skip
    command += [f"--beam-arg={arg}" for arg in BEAM_ARGS]
    return command + list(extra)


def start(command: list[str], console_path: pathlib.Path) -> subprocess.Popen:
    """Start a run in its own process group, its console output going to `console_path`."""
    # The child keeps its own copy of the file descriptor after this handle closes.
    with open(console_path, "w", encoding="utf-8") as console:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(os.environ, TF_USE_LEGACY_KERAS="1"),
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(command: list[str], console_path: pathlib.Path) -> str:
    """Run a pipeline to completion and return its console output.

    Raises:
      AssertionError: the run failed or timed out, with the end of its output.
    """
    process = start(command, console_path)
    try:
        returncode = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        returncode = None
    console = console_path.read_text(encoding="utf-8")
    assert returncode == 0, f"idpt run ended with {returncode}:\n{console[-6000:]}"
    return console


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a run's whole process group, as a crash or an out-of-memory kill would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_for_checkpoint(
    checkpoint_root: pathlib.Path, process: subprocess.Popen, timeout_s: float
) -> pathlib.Path:
    """Poll until a Stage I checkpoint folder records a finished epoch, and return it.

    `tf.train.CheckpointManager` rewrites the `checkpoint` state file after each saved
    checkpoint's files are complete, so its presence means epoch 1 or later is restorable.

    Raises:
      AssertionError: the run ended, or no checkpoint appeared within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = glob.glob(str(checkpoint_root / "*" / "checkpoint"))
        if found:
            return pathlib.Path(found[0]).parent
        assert process.poll() is None, f"the run ended with {process.returncode} before Stage I"
        time.sleep(0.05)
    raise AssertionError(f"no Stage I checkpoint under {checkpoint_root} after {timeout_s} s")


def checkpoint_epoch(checkpoint_dir: pathlib.Path) -> int:
    """Return the epoch of the latest checkpoint named in a folder's `checkpoint` state file.

    Stage I saves the checkpoint of epoch k as `ckpt-k`.
    """
    for line in (checkpoint_dir / "checkpoint").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            return int(value.strip().strip('"').rsplit("-", 1)[1])
    raise AssertionError(f"no model_checkpoint_path in {checkpoint_dir / 'checkpoint'}")


@dataclasses.dataclass
class RunRecord:
    """What ML Metadata recorded for one run of the shop dataset.

    Attributes:
      run_id: the `pipeline_run` context name.
      nodes: component id to its execution in this run.
      inputs: component id to input key to the URIs it read.
    """

    run_id: str
    nodes: dict[str, run_artifacts.NodeRun]
    inputs: dict[str, dict[str, list[str]]]

    def state(self, node_id: str) -> str:
        """Return the execution state of a component, e.g. COMPLETE or CACHED."""
        return self.nodes[node_id].state

    def output(self, node_id: str, key: str) -> metadata_store_pb2.Artifact:
        """Return the one artifact a component wrote under `key`."""
        (artifact,) = self.nodes[node_id].outputs[key]
        return artifact

    def output_uri(self, node_id: str, key: str) -> str:
        """Return the URI of the one artifact a component wrote under `key`."""
        return self.output(node_id, key).uri


def metadata_path(output: pathlib.Path) -> str:
    """Return the SQLite ML Metadata store of the shop dataset under a run output folder."""
    return str(output / DATASET / "metadata" / "metadata.sqlite")


def run_ids(output: pathlib.Path) -> list[str]:
    """Return the ids of every recorded run of the shop dataset, oldest first."""
    store = run_artifacts.open_store(metadata_path(output))
    contexts = store.get_contexts_by_type(run_artifacts.PIPELINE_RUN_CONTEXT)
    return [context.name for context in sorted(contexts, key=lambda c: c.create_time_since_epoch)]


def read_run(output: pathlib.Path, run_id: str | None = None) -> RunRecord:
    """Read one run's executions, outputs and inputs (the latest run when `run_id` is None)."""
    store = run_artifacts.open_store(metadata_path(output))
    run_id = run_id or run_artifacts.latest_run_id(store, PIPELINE_NAME)
    nodes = run_artifacts.node_runs(store, run_id)
    return RunRecord(run_id, nodes, _inputs(store, run_id))


def _inputs(store, run_id: str) -> dict[str, dict[str, list[str]]]:
    run_context = store.get_context_by_type_and_name(run_artifacts.PIPELINE_RUN_CONTEXT, run_id)
    inputs = {}
    for execution in store.get_executions_by_context(run_context.id):
        node_id = _node_id(store, execution)
        events = [
            event
            for event in store.get_events_by_execution_ids([execution.id])
            if event.type == metadata_store_pb2.Event.INPUT and event.path.steps
        ]
        artifacts = store.get_artifacts_by_id([event.artifact_id for event in events])
        uris = {artifact.id: artifact.uri for artifact in artifacts}
        by_key: dict[str, list[str]] = {}
        for event in events:
            by_key.setdefault(event.path.steps[0].key, []).append(uris[event.artifact_id])
        inputs[node_id] = by_key
    return inputs


def _node_id(store, execution) -> str:
    # Node contexts are named `<pipeline name>.<component id>`.
    for context in store.get_contexts_by_execution(execution.id):
        if context.name.startswith(f"{PIPELINE_NAME}."):
            return context.name.split(".", 1)[1]
    return ""


def int_property(artifact: metadata_store_pb2.Artifact, name: str) -> int:
    """Return an artifact's integer custom property, e.g. a blessing's `blessed`."""
    return artifact.custom_properties[name].int_value


def versions(serving_dir: pathlib.Path, model_name: str) -> list[str]:
    """Return the TF Serving version folders of one served model, oldest first."""
    model_dir = serving_dir / model_name
    if not model_dir.is_dir():
        return []
    return sorted((name for name in os.listdir(model_dir) if name.isdigit()), key=int)
