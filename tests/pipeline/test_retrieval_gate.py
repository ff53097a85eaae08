"""The retrieval gate's decisions and the blessing it writes."""

from __future__ import annotations

import json
import os

import pytest
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from tfx_pipeline.components import retrieval_gate as gate
from transforms import features

CONFIG = gate.RetrievalGateConfig(recall_k=50, floor=0.10, tolerance=0.02)


@pytest.mark.parametrize(
    "recall, baseline, blessed, reason",
    [
        # First run: the floor alone decides, and recall must be above it.
        (0.1001, None, True, "recall@50 0.1001 is above the floor 0.1000; there is no blessed"),
        (0.10, None, False, "recall@50 0.1000 is not above the floor 0.1000"),
        (0.0999, None, False, "recall@50 0.0999 is not above the floor 0.1000"),
        # 0.20 - 0.02 = 0.18: a drop to 0.18 passes, to 0.17 fails.
        (0.18, 0.20, True, "recall@50 0.1800 is above the floor 0.1000 and is within the"),
        (0.17, 0.20, False, "recall@50 0.1700 is more than the tolerance 0.0200 below the last"),
        (0.25, 0.20, True, "recall@50 0.2500 is above the floor"),
        # Below the floor fails even when far above the baseline.
        (0.09, 0.01, False, "recall@50 0.0900 is not above the floor 0.1000"),
    ],
)
def test_decide(recall, baseline, blessed, reason):
    decision = gate.decide(recall, baseline, CONFIG)
    assert decision.blessed is blessed
    assert decision.reason.startswith(reason)
    assert decision.baseline_recall == baseline


def _stage1_model(root, name: str, recall: float, model_id: int) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.uri = str(root / name)
    model.id = model_id
    serving = path_utils.serving_model_path(model.uri)
    os.makedirs(serving)
    history = {"final": {"epoch": 3, "recall@50": recall}, "recall_ks": [10, 50]}
    with open(os.path.join(serving, features.STAGE1_HISTORY_FILE), "w") as out:
        json.dump(history, out)
    return model


def _blessing(root) -> standard_artifacts.ModelBlessing:
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(root / "blessing")
    return blessing


def test_first_run_blessed_by_floor(tmp_path):
    model = _stage1_model(tmp_path, "model", 0.15, model_id=7)
    blessing = _blessing(tmp_path)
    gate.run_gate(model, None, blessing, CONFIG)

    assert blessing.get_int_custom_property("blessed") == 1
    assert blessing.get_int_custom_property("current_model_id") == 7
    assert blessing.get_string_custom_property("current_model") == model.uri
    assert blessing.get_float_custom_property("recall") == pytest.approx(0.15)
    assert os.path.exists(os.path.join(blessing.uri, gate.BLESSED_FILE))
    with open(os.path.join(blessing.uri, gate.GATE_RESULT_FILE)) as source:
        result = json.load(source)
    assert result["blessed"] is True
    assert result["reason"].startswith("recall@50 0.1500 is above the floor 0.1000; there is no")


def test_drop_beyond_tolerance_not_blessed(tmp_path):
    model = _stage1_model(tmp_path, "model", 0.15, model_id=8)
    baseline = _stage1_model(tmp_path, "baseline", 0.20, model_id=5)
    blessing = _blessing(tmp_path)
    gate.run_gate(model, baseline, blessing, CONFIG)

    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_int_custom_property("baseline_model_id") == 5
    assert blessing.get_float_custom_property("baseline_recall") == pytest.approx(0.20)
    assert os.path.exists(os.path.join(blessing.uri, gate.NOT_BLESSED_FILE))
    assert blessing.get_string_custom_property("blessing_message").startswith(
        "recall@50 0.1500 is more than the tolerance 0.0200 below"
    )


def test_missing_recall_k_names_fix(tmp_path):
    model = _stage1_model(tmp_path, "model", 0.15, model_id=1)
    with pytest.raises(
        ValueError, match=r"recorded no recall@100 \(recall_ks \[10, 50\]\): add 100"
    ):
        gate.run_gate(model, None, _blessing(tmp_path), gate.RetrievalGateConfig(recall_k=100))


def test_config_json_round_trip_and_validation():
    config = gate.RetrievalGateConfig(recall_k=10, floor=0.3, tolerance=0.05)
    assert gate.RetrievalGateConfig.from_json(config.to_json()) == config
    assert gate.RetrievalGateConfig.from_json("{}") == gate.RetrievalGateConfig()
    with pytest.raises(ValueError, match=r"^Unknown retrieval gate keys \['k'\]"):
        gate.RetrievalGateConfig.from_json('{"k": 5}')
    with pytest.raises(ValueError, match=r"floor=1.5 is invalid"):
        gate.RetrievalGateConfig(floor=1.5)


def test_component_accepts_pipeline_wiring():
    model = tfx.dsl.Channel(type=standard_artifacts.Model)
    baseline = tfx.dsl.Channel(type=standard_artifacts.Model)
    node = gate.RetrievalGate(model=model, baseline_model=baseline, config=CONFIG.to_json())
    assert set(node.inputs) == {"model", "baseline_model"}
    assert set(node.outputs) == {"blessing"}
    assert node.exec_properties["config"] == CONFIG.to_json()
