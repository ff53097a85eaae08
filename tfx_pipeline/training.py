"""The pipeline's second half: both trainers, their gates, serving validation, push.

  Transform -> Stage1Trainer -> RetrievalGate (vs LatestBlessedRetrievalModel)
    -> [only if blessed] Stage2Trainer (base_model = this run's Stage I model)
    -> Evaluator (vs LatestBlessedRankingModel) -> ServingValidator -> ModelPusher

With `skip_stage1`, the Stage I trainer and its gate are left out, and Stage II
warm-starts from the latest blessed Stage I model of earlier runs. Its embedding
export is remapped by token, so vocabularies may have changed since.
"""

import dataclasses
import json
import os

from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from tfx_pipeline import evaluation
from tfx_pipeline.components import push, serving_validation
from tfx_pipeline.components.retrieval_gate import RetrievalGate, RetrievalGateConfig
from trainer.config import Stage1Config
from trainer.stage2_config import Stage2Config
from transforms import features

STAGE1_RUN_FN = "trainer.stage1.run_fn"
STAGE2_RUN_FN = "trainer.stage2.run_fn"
HYPERPARAMETERS_FILE = "hyperparameters.json"

STAGE1_TRAINER = "Stage1Trainer"
STAGE2_TRAINER = "Stage2Trainer"
RETRIEVAL_GATE = "RetrievalGate"
EVALUATOR = "Evaluator"
SERVING_VALIDATOR = "ServingValidator"
PUSHER = "ModelPusher"
RETRIEVAL_BASELINE = "LatestBlessedRetrievalModel"
RANKING_BASELINE = "LatestBlessedRankingModel"
TRAINING_SETTINGS = "TrainingSettings"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Settings of the trainers, gates and push.

    Attributes:
      stage1: Stage I trainer config (its `epochs` is replaced by the run's epochs).
      stage2: Stage II trainer config.
      retrieval_gate: floor and tolerance of the Stage I gate.
      ranking_gate: value and change thresholds of the Evaluator.
      skip_stage1: warm-start Stage II from the latest blessed Stage I model
        instead of training Stage I in this run.
      serving_dir: TF Serving model base directory the pusher writes into;
        empty puts it under the dataset folder.
      checkpoint_dir: stable root of Stage I checkpoints (survives reruns);
        empty puts it under the dataset folder.
    """

    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)
    retrieval_gate: RetrievalGateConfig = dataclasses.field(default_factory=RetrievalGateConfig)
    ranking_gate: evaluation.RankingGateConfig = dataclasses.field(
        default_factory=evaluation.RankingGateConfig
    )
    skip_stage1: bool = False
    serving_dir: str = ""
    checkpoint_dir: str = ""

    def __post_init__(self) -> None:
        # A dict skips the config checks, and the pipeline reads these fields as config objects.
        for name, expected in (
            ("stage1", Stage1Config),
            ("stage2", Stage2Config),
            ("retrieval_gate", RetrievalGateConfig),
            ("ranking_gate", evaluation.RankingGateConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, expected):
                continue
            fix = f"pass a {expected.__name__}"
            if hasattr(expected, "from_dict"):
                fix += f", e.g. {expected.__name__}.from_dict(values) for a dict"
            raise TypeError(f"TrainingConfig {name} is a {type(value).__name__}: {fix}")


@component
def TrainingSettings(  # noqa: N802 - TFX names components like classes.
    hyperparameters: OutputArtifact[standard_artifacts.HyperParameters],
    epochs: Parameter[int],
) -> None:
    """Write the per-run training settings where TFX Trainers read hyperparameters.

    The Stage I epochs are a runtime parameter on Kubeflow. A Trainer's
    `custom_config` is fixed at compile time, but its `hyperparameters` input
    arrives at run time as `fn_args.hyperparameters`.
    """
    path = os.path.join(hyperparameters.uri, HYPERPARAMETERS_FILE)
    with open(path, "w") as file:
        json.dump({"epochs": int(epochs)}, file)


def latest_blessed(node_id: str, model_producer: str, blessing_producer: str) -> tfx.dsl.Resolver:
    """Return a Resolver of the newest `model_producer` model that `blessing_producer` blessed."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=standard_artifacts.Model, producer_component_id=model_producer),
        model_blessing=tfx.dsl.Channel(
            type=standard_artifacts.ModelBlessing, producer_component_id=blessing_producer
        ),
    ).with_id(node_id)


def build_training_half(
    training: TrainingConfig,
    first_half,
    dataset_dir: str,
    epochs,
) -> list[tfx.types.BaseNode]:
    """Build the components after Transform.

    Args:
      training: trainer and gate settings.
      first_half: `tfx_pipeline.pipeline.FirstHalf`, whose outputs feed the trainers.
      dataset_dir: the dataset's run folder (serving and checkpoint defaults).
      epochs: Stage I epochs, an int or a RuntimeParameter.

    Returns:
      The components in run order.
    """
    settings = TrainingSettings(epochs=epochs).with_id(TRAINING_SETTINGS)
    hyperparameters = settings.outputs["hyperparameters"]

    nodes = [settings]
    stage1_baseline = latest_blessed(RETRIEVAL_BASELINE, STAGE1_TRAINER, RETRIEVAL_GATE)
    nodes.append(stage1_baseline)

    stage1_model = None
    retrieval_blessing = None
    if not training.skip_stage1:
        stage1 = _stage1_trainer(training, first_half, hyperparameters, dataset_dir)
        gate = RetrievalGate(
            model=stage1.outputs["model"],
            baseline_model=stage1_baseline.outputs["model"],
            config=training.retrieval_gate.to_json(),
        ).with_id(RETRIEVAL_GATE)
        stage1_model = stage1.outputs["model"]
        retrieval_blessing = gate.outputs["blessing"]
        nodes += [stage1, gate]
        base_model = stage1_model
    else:
        base_model = stage1_baseline.outputs["model"]

    ranking_arguments = (
        training,
        first_half,
        base_model,
        stage1_model,
        retrieval_blessing,
        dataset_dir,
    )
    if retrieval_blessing is None:
        return nodes + _ranking_nodes(*ranking_arguments)

    # A Stage I model that fails its gate stops the run before Stage II, because the
    # components built inside Cond are skipped when the gate did not bless it.
    blessed = retrieval_blessing.future()[0].custom_property(push.BLESSED_PROPERTY) == 1
    with tfx.dsl.Cond(blessed):
        ranking_nodes = _ranking_nodes(*ranking_arguments)
    return nodes + ranking_nodes


def _trainer(first_half, node_id: str, run_fn: str, custom_config: dict, **inputs):
    """Build a Trainer on Transform's output that waits for the vocabulary check."""
    transform = first_half.transform
    trainer = tfx.components.Trainer(
        run_fn=run_fn,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=first_half.schema_curator.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT]),
        custom_config=custom_config,
        **inputs,
    ).with_id(node_id)
    # An empty vocabulary stops the run before training (VocabularyCheck).
    trainer.add_upstream_node(first_half.vocabulary_check)
    return trainer


def _stage1_trainer(training, first_half, hyperparameters, dataset_dir):
    checkpoint_dir = training.checkpoint_dir or os.path.join(dataset_dir, "stage1-checkpoints")
    stage1_config = dataclasses.replace(training.stage1, checkpoint_dir=checkpoint_dir)
    return _trainer(
        first_half,
        STAGE1_TRAINER,
        STAGE1_RUN_FN,
        stage1_config.to_dict(),
        hyperparameters=hyperparameters,
    )


def _ranking_nodes(
    training, first_half, base_model, stage1_model, retrieval_blessing, dataset_dir
) -> list[tfx.types.BaseNode]:
    examples = first_half.transform.outputs["transformed_examples"]
    stage2 = _trainer(
        first_half,
        STAGE2_TRAINER,
        STAGE2_RUN_FN,
        training.stage2.to_dict(),
        base_model=base_model,
    )
    ranking_baseline = latest_blessed(RANKING_BASELINE, STAGE2_TRAINER, EVALUATOR)
    evaluator = tfx.components.Evaluator(
        examples=examples,
        example_splits=[features.EVAL_SPLIT],
        model=stage2.outputs["model"],
        baseline_model=ranking_baseline.outputs["model"],
        eval_config=evaluation.create_eval_config(training.ranking_gate),
    ).with_id(EVALUATOR)
    validator = serving_validation.ServingValidator(
        ranking_model=stage2.outputs["model"],
        retrieval_model=stage1_model,
        examples=first_half.ingestion.outputs["examples"],
    ).with_id(SERVING_VALIDATOR)
    pusher = push.ModelPusher(
        ranking_model=stage2.outputs["model"],
        ranking_blessing=evaluator.outputs["blessing"],
        serving_blessing=validator.outputs["blessing"],
        retrieval_model=stage1_model,
        retrieval_blessing=retrieval_blessing,
        examples=examples,
        base_directory=training.serving_dir or os.path.join(dataset_dir, "serving"),
    ).with_id(PUSHER)
    return [stage2, ranking_baseline, evaluator, validator, pusher]
