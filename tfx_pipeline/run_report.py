"""The report printed and written at the end of `idpt run`.

Sections are plain dicts, so later stages can add their own (training metrics,
gate results, pushed paths) with `RunReport.add`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tfx_pipeline import local_runner
from tfx_pipeline.components import ingestion, vocabulary_check
from tfx_pipeline.config import PipelineConfig

REPORT_JSON = "run_report.json"
REPORT_TEXT = "run_report.txt"


@dataclasses.dataclass
class RunReport:
    """Named sections of JSON-ready values, in insertion order."""

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
        """Write REPORT_JSON and REPORT_TEXT into `folder`; return both paths."""
        os.makedirs(folder, exist_ok=True)
        json_path = os.path.join(folder, REPORT_JSON)
        text_path = os.path.join(folder, REPORT_TEXT)
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(self.sections, file, indent=2, ensure_ascii=False)
            file.write("\n")
        with open(text_path, "w", encoding="utf-8") as file:
            file.write(self.to_text())
        return json_path, text_path


def _format_values(values: dict[str, Any], indent: int) -> list[str]:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(_format_values(value, indent + 2))
        else:
            lines.append(f"{' ' * indent}{key}: {value}")
    return lines


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

    examples = local_runner.latest_output_uris(config, "LogIngestion", ingestion.EXAMPLES_KEY)
    if examples:
        counts = ingestion.load_report(examples[0])
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

    sizes = local_runner.latest_output_uris(config, "VocabularyCheck", "vocabulary_sizes")
    if sizes:
        report.add(
            "vocabularies (tokens, OOV index excluded)", vocabulary_check.load_sizes(sizes[0])
        )
    return report
