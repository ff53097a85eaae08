"""The TFMA evaluation config that gates the Stage II ranking model.

The Evaluator reads Transform's eval examples: they carry every raw column
(which the model's `serving_default` signature parses) and the derived slice
features, so slices by item popularity bucket and by new versus returning user
need no second pass over the data.
"""

from __future__ import annotations

import dataclasses

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

from transforms import features


@dataclasses.dataclass(frozen=True)
class RankingGateConfig:
    """Thresholds that decide whether a Stage II ranking model is blessed.

    Attributes:
      min_auc: AUC on the eval split must be at least this (value threshold;
        decides alone on the first run, when no blessed baseline exists).
      max_log_loss: log loss on the eval split must be at most this. A model
        that always predicts 0.5 scores 0.69; the default 1.0 leaves room for the
        label-rate shift of a time split (MovieLens 100K: 0.80 after one epoch,
        from `make run DATA=../shared/data/movielens-100k`) and catches broken models.
      max_auc_drop: AUC may fall below the latest blessed model's by at most
        this much (change threshold against the baseline).
      max_log_loss_rise: log loss may exceed the baseline's by at most this.
    """

    min_auc: float = 0.55
    max_log_loss: float = 1.0
    max_auc_drop: float = 0.01
    max_log_loss_rise: float = 0.02


SLICE_FEATURES = (features.ITEM_POPULARITY_BUCKET, features.USER_IS_RETURNING)


def create_eval_config(gate: RankingGateConfig) -> tfma.EvalConfig:
    """Build the EvalConfig: AUC, log loss, calibration and example count by slice.

    Args:
      gate: the value and change thresholds.

    Returns:
      A `tfma.EvalConfig` for the Evaluator with a baseline model spec, so
      change thresholds apply whenever a Resolver finds a blessed baseline.
    """
    model_specs = [
        tfma.ModelSpec(
            name="candidate",
            signature_name=features.SERVING_DEFAULT_SIGNATURE,
            label_key=features.LABEL,
        ),
        tfma.ModelSpec(
            name="baseline",
            signature_name=features.SERVING_DEFAULT_SIGNATURE,
            label_key=features.LABEL,
            is_baseline=True,
        ),
    ]
    slicing_specs = [tfma.SlicingSpec()]
    slicing_specs += [tfma.SlicingSpec(feature_keys=[key]) for key in SLICE_FEATURES]
    return tfma.EvalConfig(
        model_specs=model_specs,
        slicing_specs=slicing_specs,
        metrics_specs=[tfma.MetricsSpec(metrics=_metric_configs(gate))],
    )


def _overall(threshold: tfma.MetricThreshold) -> list[config_pb2.PerSliceMetricThreshold]:
    # A plain MetricConfig.threshold is checked on every slice; the gate decides on
    # the whole eval split, and small slices (new users) only get reported.
    return [
        config_pb2.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
    ]


def _metric_configs(gate: RankingGateConfig) -> list[tfma.MetricConfig]:
    higher_is_better = tfma.MetricDirection.HIGHER_IS_BETTER
    lower_is_better = tfma.MetricDirection.LOWER_IS_BETTER
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=higher_is_better, absolute={"value": -gate.max_auc_drop}
        ),
    )
    log_loss_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(upper_bound={"value": gate.max_log_loss}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=lower_is_better, absolute={"value": gate.max_log_loss_rise}
        ),
    )
    return [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="AUC", per_slice_thresholds=_overall(auc_threshold)),
        tfma.MetricConfig(
            class_name="BinaryCrossentropy", per_slice_thresholds=_overall(log_loss_threshold)
        ),
        tfma.MetricConfig(class_name="Calibration"),
        tfma.MetricConfig(class_name="MeanLabel"),
        tfma.MetricConfig(class_name="MeanPrediction"),
    ]
