"""The same pipeline compiles to a Kubeflow Pipelines v2 spec with the right shape."""

import json

import pytest

from kubeflow import runner
from tfx_pipeline import training
from tfx_pipeline.config import PipelineConfig

IMAGE = "registry.example/idpt:test"

FIRST_HALF = (
    "LogIngestion",
    "StatisticsGen",
    "SchemaGen",
    "SchemaCurator",
    "ExampleValidator",
    "AnomaliesGate",
    "Transform",
    "VocabularyCheck",
)
SECOND_HALF = (
    training.TRAINING_SETTINGS,
    training.STAGE1_TRAINER,
    training.RETRIEVAL_GATE,
    training.STAGE2_TRAINER,
    training.EVALUATOR,
    training.SERVING_VALIDATOR,
    training.PUSHER,
)
# (task, a task it must run after), for the order the method needs.
ORDER = (
    ("StatisticsGen", "LogIngestion"),
    ("Transform", "AnomaliesGate"),
    (training.STAGE1_TRAINER, "Transform"),
    (training.STAGE1_TRAINER, "VocabularyCheck"),
    (training.STAGE1_TRAINER, training.TRAINING_SETTINGS),
    (training.RETRIEVAL_GATE, training.STAGE1_TRAINER),
    (training.STAGE2_TRAINER, training.STAGE1_TRAINER),
    (training.STAGE2_TRAINER, training.RETRIEVAL_GATE),
    (training.EVALUATOR, training.STAGE2_TRAINER),
    (training.SERVING_VALIDATOR, training.STAGE2_TRAINER),
    (training.PUSHER, training.EVALUATOR),
    (training.PUSHER, training.SERVING_VALIDATOR),
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("kfp")
    config = PipelineConfig(output_dir=str(folder / "runs"), epochs=7)
    target = runner.KubeflowTarget(IMAGE, "gs://bucket/idpt/root", "gs://bucket/idpt/serving")

    path = runner.compile_pipeline(config, target, str(folder / "idpt_pipeline.json"))

    with open(path) as file:
        return json.load(file)["pipelineSpec"]


def test_every_component_present(spec):
    tasks = spec["root"]["dag"]["tasks"]

    for node_id in FIRST_HALF + SECOND_HALF:
        assert node_id in tasks, node_id


def test_every_executor_uses_image(spec):
    executors = spec["deploymentSpec"]["executors"]
    containers = [
        executor["container"] for executor in executors.values() if "container" in executor
    ]

    assert len(containers) >= len(FIRST_HALF + SECOND_HALF)
    assert {container["image"] for container in containers} == {IMAGE}


def test_runtime_parameters_present(spec):
    parameters = spec["root"]["inputDefinitions"]["parameters"]

    assert parameters["data-path"]["type"] == "STRING"
    assert parameters["epochs"]["type"] == "INT"


def test_dependencies_in_order(spec):
    tasks = spec["root"]["dag"]["tasks"]

    for task, upstream in ORDER:
        assert upstream in tasks[task].get("dependentTasks", []), (task, upstream)


def test_stage2_runs_only_when_gate_blesses(spec):
    condition = spec["root"]["dag"]["tasks"][training.STAGE2_TRAINER]["triggerPolicy"]["condition"]

    assert "RetrievalGate" in condition
    assert "['blessed'] == 1" in condition


def test_runtime_parameters_feed_components(spec):
    tasks = spec["root"]["dag"]["tasks"]
    ingestion_inputs = tasks["LogIngestion"]["inputs"]["parameters"]
    settings_inputs = tasks[training.TRAINING_SETTINGS]["inputs"]["parameters"]

    assert ingestion_inputs["data"] == {"componentInputParameter": "data-path"}
    assert settings_inputs["epochs"] == {"componentInputParameter": "epochs"}
