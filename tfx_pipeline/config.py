"""Typed configuration of one pipeline run: data, split, vocabularies, Beam.

`PipelineConfig` is what `create_pipeline` and the runners take. Every part that
travels into a component as an execution parameter round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from tfx_pipeline.training import TrainingConfig
from transforms import preprocessing, readers
from transforms.log_mapping import ColumnMapping

# The embedded default log: the generator's default spec (see transforms.generator).
DEFAULT_DATA = readers.SYNTHETIC
DEFAULT_OUTPUT_DIR = "idpt-runs"

# Beam's local FnApiRunner with 2 worker processes, outside the orchestrating process. It
# is named because Beam 2.77's DirectRunner first tries PrismRunner, which downloads its
# binary from GitHub. Override with --beam-arg.
DEFAULT_BEAM_PIPELINE_ARGS = (
    "--runner=FnApiRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
)

ANOMALIES_ERROR = "error"
ANOMALIES_WARNING = "warning"
ANOMALY_SEVERITIES = (ANOMALIES_ERROR, ANOMALIES_WARNING)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Time split settings: train < T1 <= eval < T2 <= test.

    Either the fractions apply (T1 and T2 are the timestamps at those ranks of the
    time-ordered log), or both explicit cut-offs are given.

    Attributes:
      fractions: train, eval and test shares of the rows, each > 0, summing to 1.
      train_end: explicit T1 (seconds), the first timestamp outside the train split.
      eval_end: explicit T2 (seconds), the first timestamp of the test split.
      pretrain_end: optional last timestamp (inclusive) of the Stage I pre-training
        window; it must be earlier than T1. None: Stage I uses the whole train split.
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    train_end: int | None = None
    eval_end: int | None = None
    pretrain_end: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if len(self.fractions) != 3 or min(self.fractions) <= 0:
            raise ValueError(
                f"split fractions must be three shares > 0 (train, eval, test), "
                f"got {self.fractions}: e.g. 0.8,0.1,0.1."
            )
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got {self.fractions} "
                f"(sum {sum(self.fractions):g}): e.g. 0.8,0.1,0.1."
            )
        if (self.train_end is None) != (self.eval_end is None):
            raise ValueError(
                f"explicit cut-offs need both T1 and T2, got train_end={self.train_end} "
                f"and eval_end={self.eval_end}: give both, or neither to split by fractions."
            )
        if self.train_end is not None and self.train_end >= self.eval_end:
            raise ValueError(
                f"train_end T1={self.train_end} must be earlier than eval_end "
                f"T2={self.eval_end}, because the eval window is T1 <= timestamp < T2."
            )
        if self.train_end is not None and self.pretrain_end is not None:
            check_pretrain_end(self.pretrain_end, self.train_end)

    @property
    def explicit(self) -> bool:
        """True when T1 and T2 are given rather than computed from fractions."""
        return self.train_end is not None

    def to_json(self) -> str:
        """Return the config as a JSON object string."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SplitConfig:
        """Parse `to_json` output."""
        return cls(**json.loads(text))


def check_pretrain_end(pretrain_end: int, train_end: int) -> None:
    """Raise ValueError unless the pre-training window ends before T1."""
    if pretrain_end >= train_end:
        raise ValueError(
            f"the pre-training window must end before the train cut-off: pretrain_end "
            f"{pretrain_end} >= T1 {train_end}. Pass a pretrain end earlier than T1, or "
            "none to pre-train on the whole train split."
        )


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs.

    Attributes:
      data: log path (file, folder or glob) or a synthetic spec such as "synthetic".
      data_format: one of `transforms.readers.FORMATS`.
      mapping: column mapping; None uses the format's default mapping.
      output_dir: root of every run; this dataset's files go under
        output_dir/<dataset_name>/.
      split: time split settings.
      preprocessing: vocabulary settings passed to Transform.
      beam_pipeline_args: Beam options for every Beam component.
      anomaly_severity: "error" stops the run on anomalies in canonical columns,
        "warning" only logs them.
      epochs: Stage I epochs (read by the trainers).
      enable_cache: reuse results of components whose inputs did not change.
      dataset: name of the run folder; None derives it from `data`.
      training: trainers, gates and push settings.
      first_half_only: stop after Transform and its vocabulary check (no
        training, evaluation or push), e.g. to check a new log quickly.
    """

    data: str = DEFAULT_DATA
    data_format: str = readers.SYNTHETIC
    mapping: ColumnMapping | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    preprocessing: preprocessing.PreprocessingConfig = dataclasses.field(
        default_factory=preprocessing.PreprocessingConfig
    )
    beam_pipeline_args: tuple[str, ...] = DEFAULT_BEAM_PIPELINE_ARGS
    anomaly_severity: str = ANOMALIES_ERROR
    epochs: int = 5
    enable_cache: bool = True
    dataset: str | None = None
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    first_half_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "beam_pipeline_args", tuple(self.beam_pipeline_args))
        if self.data_format not in readers.FORMATS:
            raise ValueError(
                f"data format {self.data_format!r} is unknown: use one of "
                f"{', '.join(readers.FORMATS)}."
            )
        if self.anomaly_severity not in ANOMALY_SEVERITIES:
            raise ValueError(
                f"anomaly severity {self.anomaly_severity!r} is invalid: use "
                f"{' or '.join(ANOMALY_SEVERITIES)}."
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}.")

    @property
    def dataset_name(self) -> str:
        """Folder name of this dataset's runs, e.g. "movielens-100k" or "synthetic"."""
        if self.dataset:
            return _safe_name(self.dataset)
        if self.data_format == readers.SYNTHETIC:
            return _safe_name(self.data.replace(":", "-").replace(",", "-").replace("=", ""))
        base = os.path.basename(os.path.normpath(self.data)) or "data"
        return _safe_name(base)

    @property
    def pipeline_name(self) -> str:
        """TFX pipeline name; ML Metadata keys contexts by it."""
        return f"idpt-{self.dataset_name}"

    @property
    def dataset_dir(self) -> str:
        """output_dir/<dataset_name>, the folder of everything this dataset's runs write."""
        return os.path.join(os.path.abspath(self.output_dir), self.dataset_name)

    @property
    def pipeline_root(self) -> str:
        """Folder of the component outputs (artifacts)."""
        return os.path.join(self.dataset_dir, "pipeline")

    @property
    def metadata_path(self) -> str:
        """SQLite ML Metadata store of this dataset's runs."""
        return os.path.join(self.dataset_dir, "metadata", "metadata.sqlite")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready values, for the run report."""
        return {
            "data": self.data,
            "data_format": self.data_format,
            "mapping": json.loads(self.mapping.to_json()) if self.mapping else None,
            "output_dir": self.output_dir,
            "split": dataclasses.asdict(self.split),
            "preprocessing": self.preprocessing.to_custom_config(),
            "beam_pipeline_args": list(self.beam_pipeline_args),
            "anomaly_severity": self.anomaly_severity,
            "epochs": self.epochs,
            "enable_cache": self.enable_cache,
            "dataset": self.dataset_name,
            "stage1": self.training.stage1.to_dict(),
            "stage2": self.training.stage2.to_dict(),
            "retrieval_gate": json.loads(self.training.retrieval_gate.to_json()),
            "ranking_gate": dataclasses.asdict(self.training.ranking_gate),
            "skip_stage1": self.training.skip_stage1,
            "first_half_only": self.first_half_only,
        }


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned or "data"


def merge_beam_args(defaults: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """Return `defaults` with any option that `extra` sets again replaced by `extra`'s value.

    Args:
      defaults: e.g. DEFAULT_BEAM_PIPELINE_ARGS.
      extra: user options such as "--runner=DataflowRunner" or "--direct_num_workers=4".

    Returns:
      The merged options: defaults not overridden, then every extra option in order.
    """
    overridden = {_option_name(arg) for arg in extra}
    kept = [arg for arg in defaults if _option_name(arg) not in overridden]
    return (*kept, *extra)


def _option_name(arg: str) -> str:
    return arg.split("=", 1)[0]
