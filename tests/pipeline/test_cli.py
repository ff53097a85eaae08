"""The `idpt` command line: format detection, run options, and the benchmark page."""

import argparse

import pytest

from tfx_pipeline import benchmarks, cli
from tfx_pipeline.config import PipelineConfig, merge_beam_args
from tfx_pipeline.training import TrainingConfig


def _run_args(*argv: str) -> argparse.Namespace:
    return cli._build_parser().parse_args(["run", *argv])


def test_detect_format(movielens_dir, cases_dir):
    assert cli.detect_format(str(movielens_dir)) == "movielens-100k"
    assert cli.detect_format(str(movielens_dir / "u.data")) == "movielens-100k"
    assert cli.detect_format(str(cases_dir / "empty_ids.csv")) == "csv"
    assert cli.detect_format("synthetic:rows=1000") == "synthetic"


def test_detect_format_names_the_fix(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="pass --format"):
        cli.detect_format(str(path))


def test_run_options_build_config(tmp_path):
    args = _run_args(
        "--data", str(tmp_path / "log.csv"),
        "--format", "csv",
        "--output", str(tmp_path / "runs"),
        "--frequency-threshold", "2",
        "--frequency-threshold", "item_id=3",
        "--top-k", "user_id=100",
        "--train-end", "10",
        "--eval-end", "20",
        "--pretrain-end", "5",
        "--beam-arg=--direct_num_workers=4",
        "--mapping", "label_rule=binary", "weight=w",
        "--anomalies", "warning",
        "--epochs", "3",
    )  # fmt: skip
    config = cli.config_from_args(args)

    assert config.preprocessing.frequency_threshold_for("user_id") == 2
    assert config.preprocessing.frequency_threshold_for("item_id") == 3
    assert config.preprocessing.top_k_for("user_id") == 100
    assert config.preprocessing.top_k_for("item_id") is None
    assert (config.split.train_end, config.split.eval_end, config.split.pretrain_end) == (10, 20, 5)
    assert config.beam_pipeline_args == (
        "--runner=FnApiRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=4",
    )
    assert config.mapping.weight == "w"
    assert (config.anomaly_severity, config.epochs) == ("warning", 3)
    assert config.dataset_name == "log.csv"
    assert config.pipeline_root == str(tmp_path / "runs" / "log.csv" / "pipeline")
    assert config.metadata_path == str(tmp_path / "runs" / "log.csv" / "metadata/metadata.sqlite")


def test_default_run_is_synthetic():
    config = cli.config_from_args(_run_args())
    assert (config.data, config.data_format, config.dataset_name) == (
        "synthetic",
        "synthetic",
        "synthetic",
    )
    assert config.mapping is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split-fractions", "0.5,0.5"], "give three numbers"),
        (["--train-end", "10"], "need both T1 and T2"),
        (["--frequency-threshold", "item_id=two"], "use N or FEATURE=N"),
        (["--frequency-threshold", "0"], "must be an integer >= 1"),
        # 0 is a value like any other, not "use the default".
        (["--stage1-batch-size", "0"], "Stage I config batch_size=0 is invalid"),
        (["--embedding-dim", "0"], "Stage I config embedding_dim=0 is invalid"),
        (["--stage2-steps", "0"], "steps_per_epoch=0 is invalid"),
    ],
)
def test_invalid_run_options(argv, message):
    with pytest.raises(cli.ConfigError, match=message):
        cli.config_from_args(_run_args("--format", "synthetic", *argv))


def test_skip_stage1_without_earlier_run_rejected(tmp_path):
    args = _run_args("--format", "synthetic", "--output", str(tmp_path), "--skip-stage1")
    metadata = tmp_path / "synthetic" / "metadata" / "metadata.sqlite"
    expected = (
        "--skip-stage1 warm-starts from a blessed Stage I model of an earlier run of this "
        f"dataset, but there is no earlier run: {metadata} does not exist. Run once without "
        "--skip-stage1, or pass the --output and --dataset of that run."
    )
    with pytest.raises(cli.ConfigError) as raised:
        cli.config_from_args(args)
    assert str(raised.value) == expected

    metadata.parent.mkdir(parents=True)
    metadata.write_bytes(b"")
    assert cli.config_from_args(args).training.skip_stage1


def test_merge_beam_args_replaces_repeated_options():
    merged = merge_beam_args(
        ("--direct_running_mode=multi_processing", "--direct_num_workers=2"),
        ("--runner=FlinkRunner", "--direct_num_workers=8"),
    )
    assert merged == (
        "--direct_running_mode=multi_processing",
        "--runner=FlinkRunner",
        "--direct_num_workers=8",
    )


def test_config_rejects_unknown_format():
    with pytest.raises(ValueError, match="data format 'xls' is unknown"):
        PipelineConfig(data="log.xls", data_format="xls")


def test_benchmark_registry_finds_transform_bench():
    assert "transform_bench" in benchmarks.discover()


def test_benchmark_page_replaces_its_section(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    benchmarks.write_markdown(
        {"transform_bench": {"100,000 rows: rows/s": 1234.5}}, str(page), True
    )
    benchmarks.write_markdown({"transform_bench": {"100,000 rows: rows/s": 99.0}}, str(page), True)

    text = page.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("<!-- bench:transform_bench:quick -->") == 1
    assert text.count("<!-- /bench:transform_bench:quick -->") == 1
    assert "| 100,000 rows: rows/s | 99 |" in text
    assert "1,234.5" not in text


def test_quick_run_keeps_full_size_section(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    benchmarks.write_markdown({"transform_bench": {"rows/s": 5000.0}}, str(page), False)
    (section,) = benchmarks.write_markdown({"transform_bench": {"rows/s": 70.0}}, str(page), True)

    text = page.read_text()
    assert "| rows/s | 5,000.0 |" in text
    assert section in text
    assert section.startswith("<!-- bench:transform_bench:quick -->\n## Transform throughput, ")
    assert "| rows/s | 70 |" in section
    assert text.index("<!-- bench:transform_bench -->") < text.index(section)


def test_training_config_rejects_dict():
    expected = (
        "TrainingConfig stage1 is a dict: pass a Stage1Config, e.g. "
        "Stage1Config.from_dict(values) for a dict"
    )
    with pytest.raises(TypeError) as raised:
        TrainingConfig(stage1={"temperature": 0.1})
    assert str(raised.value) == expected
