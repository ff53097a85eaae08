"""The retrieval gate: blesses a Stage I model on its eval recall@K.

A Stage I model is blessed when both hold:

  1. recall@K > floor;
  2. recall@K >= baseline recall@K - tolerance, where the baseline is the latest Stage I
     model this gate blessed before. A first run, without a blessed baseline, is decided by
     the floor alone.

Recall@K is the "final" (last epoch) entry of the history the Stage I trainer saves beside
its serving model (see `trainer.stage1`). The blessing is a ModelBlessing with the custom
properties that TFX's Evaluator writes (`blessed`, `current_model`, `current_model_id`,
`baseline_model`, `baseline_model_id`, `blessing_message`), so LatestBlessedModelStrategy
and the pusher read it like an Evaluator blessing. It also records `recall` and
`baseline_recall`. Its folder contains a BLESSED or NOT_BLESSED marker file and
GATE_RESULT_FILE with the decision and its reason.
"""

# No `from __future__ import annotations` here: TFX 1.21 reads the component function's
# annotations as objects and rejects the string "None" as a return type.
import dataclasses
import json
import os

import tensorflow as tf
from absl import logging
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts
from tfx.utils import path_utils

from trainer import retrieval_metrics, stage1

GATE_RESULT_FILE = "gate_result.json"
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"


@dataclasses.dataclass(frozen=True)
class RetrievalGateConfig:
    """Thresholds of the retrieval gate.

    Attributes:
      recall_k: K of the recall@K that decides; must be among the Stage I `recall_ks`.
      floor: recall@K must be above it (exclusive), so a floor of 0 rejects a model that
        retrieves nothing.
      tolerance: Largest absolute drop of recall@K below the last blessed Stage I model.
    """

    recall_k: int = 50
    floor: float = 0.01
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        if self.recall_k <= 0:
            raise ValueError(f"Retrieval gate recall_k={self.recall_k} is invalid: use K > 0")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(
                f"Retrieval gate floor={self.floor} is invalid: use a recall in [0, 1]"
            )
        if self.tolerance < 0.0:
            raise ValueError(
                f"Retrieval gate tolerance={self.tolerance} is invalid: use 0 or a positive drop"
            )

    def to_json(self) -> str:
        """Return the config as JSON, the form the component's parameter takes."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RetrievalGateConfig":
        """Parse `to_json` output; absent keys take their defaults.

        Raises:
          ValueError: Unknown keys or invalid values.
        """
        values = json.loads(text or "{}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown retrieval gate keys {unknown}: valid keys are {sorted(known)}"
            )
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one model.

    Attributes:
      blessed: Whether the model passes.
      reason: One sentence with the figures that decided.
      recall: The model's recall@K.
      baseline_recall: The last blessed model's recall@K, or None on a first run.
    """

    blessed: bool
    reason: str
    recall: float
    baseline_recall: float | None


def decide(
    recall: float, baseline_recall: float | None, config: RetrievalGateConfig
) -> GateDecision:
    """Apply the floor, then the tolerance against the baseline.

    Args:
      recall: The candidate model's recall@K.
      baseline_recall: The last blessed Stage I model's recall@K, or None without one.
      config: The thresholds.

    Returns:
      The decision and its reason.
    """
    name = retrieval_metrics.recall_metric_name(config.recall_k)
    if recall <= config.floor:
        reason = f"{name} {recall:.4f} is not above the floor {config.floor:.4f}"
        return GateDecision(False, reason, recall, baseline_recall)

    if baseline_recall is None:
        reason = (
            f"{name} {recall:.4f} is above the floor {config.floor:.4f}; there is no blessed "
            "Stage I model to compare with, so the floor decides"
        )
        return GateDecision(True, reason, recall, None)

    # Rounding keeps a drop that equals the tolerance in decimals (0.20 - 0.18 against
    # 0.02) from failing on binary floating-point error.
    if round(baseline_recall - recall, 9) > config.tolerance:
        reason = (
            f"{name} {recall:.4f} is more than the tolerance {config.tolerance:.4f} below the "
            f"last blessed Stage I model's {baseline_recall:.4f}"
        )
        return GateDecision(False, reason, recall, baseline_recall)

    reason = (
        f"{name} {recall:.4f} is above the floor {config.floor:.4f} and is within the tolerance "
        f"{config.tolerance:.4f} of the last blessed Stage I model's {baseline_recall:.4f}"
    )
    return GateDecision(True, reason, recall, baseline_recall)


def final_recall(model_uri: str, recall_k: int) -> float:
    """Read the last epoch's recall@K of a Stage I Model artifact.

    Args:
      model_uri: The Model artifact folder (the one holding Format-Serving).
      recall_k: K.

    Returns:
      The recall.

    Raises:
      FileNotFoundError: The model has no Stage I history.
      ValueError: The history has no recall@K.
    """
    history = stage1.read_history(path_utils.serving_model_path(model_uri))
    name = retrieval_metrics.recall_metric_name(recall_k)
    final = history.get("final", {})
    if final.get(name) is None:
        raise ValueError(
            f"The Stage I model at {model_uri} recorded no {name} (recall_ks "
            f"{history.get('recall_ks')}): add {recall_k} to the Stage I recall_ks or set the "
            "gate's recall_k to one of them"
        )
    return float(final[name])


def run_gate(
    model: artifact.Artifact,
    baseline_model: artifact.Artifact | None,
    blessing: artifact.Artifact,
    config: RetrievalGateConfig,
) -> GateDecision:
    """Decide on `model` and write the blessing; the body of the RetrievalGate component.

    Args:
      model: The Stage I Model artifact to judge.
      baseline_model: The latest blessed Stage I Model artifact, or None.
      blessing: The ModelBlessing artifact to fill.
      config: The thresholds.

    Returns:
      The decision.
    """
    recall = final_recall(model.uri, config.recall_k)
    baseline_recall = None
    if baseline_model is not None:
        # NOTE: the baseline's recall is the one it recorded on its own eval split. Once the
        # data has moved on, the two recalls come from different eval rows.
        baseline_recall = final_recall(baseline_model.uri, config.recall_k)

    decision = decide(recall, baseline_recall, config)
    _write_blessing(blessing, decision, model, baseline_model)
    logging.info(
        "Retrieval gate: %s the Stage I model %s: %s",
        "blessed" if decision.blessed else "did not bless",
        model.uri,
        decision.reason,
    )
    return decision


def _write_blessing(
    blessing: artifact.Artifact,
    decision: GateDecision,
    model: artifact.Artifact,
    baseline_model: artifact.Artifact | None,
) -> None:
    blessing.set_int_custom_property("blessed", int(decision.blessed))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("blessing_message", decision.reason)
    blessing.set_float_custom_property("recall", decision.recall)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
        blessing.set_float_custom_property("baseline_recall", decision.baseline_recall)

    tf.io.gfile.makedirs(blessing.uri)
    marker = BLESSED_FILE if decision.blessed else NOT_BLESSED_FILE
    with tf.io.gfile.GFile(os.path.join(blessing.uri, marker), "w") as out:
        out.write("")
    with tf.io.gfile.GFile(os.path.join(blessing.uri, GATE_RESULT_FILE), "w") as out:
        out.write(json.dumps(dataclasses.asdict(decision), indent=2, sort_keys=True))


@component
def RetrievalGate(  # noqa: N802 - TFX names components like classes.
    model: InputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    config: Parameter[str] = "{}",
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
) -> None:
    """Bless the Stage I model when its eval recall@K passes the floor and the tolerance.

    Args:
      model: The Stage I Trainer's model.
      blessing: Receives the decision (see the module docstring).
      config: `RetrievalGateConfig.to_json()`.
      baseline_model: The latest Stage I model this gate blessed, if any.
    """
    run_gate(model, baseline_model, blessing, RetrievalGateConfig.from_json(config))
