"""The `idpt` command: run the pipeline locally, or run the benchmarks.

  idpt run [--data PATH] [--format F] [--mapping KEY=VALUE ...] [--output DIR] ...
  idpt bench [--output DIR] [--quick] [--only NAME ...]
  idpt serve --model-base-dir DIR        the local TF Serving-protocol server
  idpt recommend --user ID --k N         top items for a user through gRPC
  idpt serving-config --output DIR       TF Serving config files and Kubernetes manifests
  idpt compile-kfp --image IMAGE ...     the Kubeflow Pipelines v2 spec

TF_USE_LEGACY_KERAS is set before anything imports TensorFlow: TFRS and TFMA need
Keras 2 (tf_keras), and TensorFlow 2.16+ picks Keras 3 unless it is set first.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from transforms import features, readers  # noqa: E402
from transforms.log_mapping import ColumnMapping  # noqa: E402

# Formats recognised from a path when --format is not given.
_MOVIELENS_FILE_FORMATS = {
    "u.data": readers.MOVIELENS_100K,
    "ratings.dat": readers.MOVIELENS_DAT,
    "ratings.csv": readers.MOVIELENS_CSV,
}
_SUFFIX_FORMATS = (
    ((".csv", ".csv.gz"), readers.CSV),
    ((".parquet", ".pq"), readers.PARQUET),
    ((".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz"), readers.TFRECORD),
)


def detect_format(data: str) -> str:
    """Return the log format a path stands for, for runs without --format.

    Raises:
      ValueError: no format is recognised, with the fix.
    """
    if data.split(":", 1)[0] == readers.SYNTHETIC:
        return readers.SYNTHETIC
    for name, data_format in _MOVIELENS_FILE_FORMATS.items():
        if os.path.basename(data) == name or os.path.isfile(os.path.join(data, name)):
            return data_format
    candidates = sorted(os.listdir(data)) if os.path.isdir(data) else [data]
    for suffixes, data_format in _SUFFIX_FORMATS:
        if any(candidate.endswith(suffixes) for candidate in candidates):
            return data_format
    raise ValueError(
        f"cannot tell the format of {data!r}: pass --format, one of {', '.join(readers.FORMATS)}."
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idpt", description="Two-stage contrastive ID pre-training on TFX."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("run", help="run the pipeline locally"))

    bench = commands.add_parser("bench", help="run the benchmarks and write BENCHMARKS.md")
    bench.add_argument("--output", default="idpt-runs", help="folder for benchmark data")
    bench.add_argument("--markdown", default="BENCHMARKS.md", help="Markdown file to write")
    bench.add_argument("--quick", action="store_true", help="small sizes only")
    bench.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this module"
    )

    from serving import commands as serving_commands

    serving_commands.add_serve_arguments(
        commands.add_parser("serve", help="serve a model base folder over TF Serving's gRPC API")
    )
    serving_commands.add_recommend_arguments(
        commands.add_parser("recommend", help="recommend items for a user through gRPC")
    )
    serving_commands.add_serving_config_arguments(
        commands.add_parser(
            "serving-config", help="write TF Serving config files and Kubernetes manifests"
        )
    )
    _add_compile_arguments(
        commands.add_parser("compile-kfp", help="compile the pipeline for Kubeflow Pipelines v2")
    )
    return parser


def _add_compile_arguments(compile_kfp: argparse.ArgumentParser) -> None:
    _add_run_arguments(compile_kfp)
    compile_kfp.add_argument("--image", required=True, help="component image built from Dockerfile")
    compile_kfp.add_argument(
        "--pipeline-root",
        required=True,
        help="artifact root every component reaches, e.g. gs://...",
    )
    compile_kfp.add_argument(
        "--spec", default="idpt_pipeline.json", help="pipeline spec file to write"
    )


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--data",
        help="log file, folder or glob, or a synthetic spec such as "
        "'synthetic:rows=100000,seed=7,weeks=6' (default: the built-in synthetic log)",
    )
    run.add_argument("--format", choices=readers.FORMATS, help="log format (default: from --data)")
    run.add_argument(
        "--mapping",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="column mapping items over the format's default, e.g. user_id=uid "
        "label_rule=threshold:4 rating=stars",
    )
    run.add_argument("--mapping-file", help="column mapping as a JSON file")

    run.add_argument("--output", default="idpt-runs", help="root folder of all runs")
    run.add_argument("--dataset", help="name of this dataset's run folder (default: from --data)")
    run.add_argument("--epochs", type=int, default=5, help="Stage I training epochs")

    run.add_argument(
        "--split-fractions",
        default="0.8,0.1,0.1",
        help="train,eval,test shares of the rows in time order (default 0.8,0.1,0.1)",
    )
    run.add_argument("--train-end", type=int, help="explicit T1 in seconds (needs --eval-end)")
    run.add_argument("--eval-end", type=int, help="explicit T2 in seconds (needs --train-end)")
    run.add_argument(
        "--pretrain-end", type=int, help="last timestamp of the Stage I window (before T1)"
    )

    run.add_argument(
        "--frequency-threshold",
        action="append",
        default=[],
        metavar="N|FEATURE=N",
        help="minimum train count for a vocabulary token, for all features or one",
    )
    run.add_argument(
        "--top-k",
        action="append",
        default=[],
        metavar="N|FEATURE=N",
        help="maximum vocabulary size, for all features or one",
    )

    run.add_argument(
        "--anomalies",
        choices=("error", "warning"),
        default="error",
        help="whether anomalies in canonical columns stop the run (default error)",
    )
    run.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Beam pipeline option, e.g. --beam-arg=--direct_num_workers=4 (repeatable)",
    )
    run.add_argument("--no-cache", action="store_true", help="rerun every component")

    run.add_argument("--embedding-dim", type=int, help="width of the id embedding tables")
    run.add_argument("--stage1-batch-size", type=int, help="Stage I training batch size")
    run.add_argument(
        "--stage2-variant",
        choices=("frozen", "finetune", "full", "cold"),
        help="how Stage II uses the pre-trained tables (default finetune)",
    )
    run.add_argument("--stage2-steps", type=int, help="Stage II batches per epoch (default: all)")
    run.add_argument(
        "--skip-stage1",
        action="store_true",
        help="warm-start Stage II from the latest blessed Stage I model instead of training one",
    )
    run.add_argument("--min-recall", type=float, help="retrieval gate floor on eval recall@K")
    run.add_argument("--min-auc", type=float, help="ranking gate floor on eval AUC")
    run.add_argument(
        "--serving-dir", help="TF Serving model base directory (default: <dataset folder>/serving)"
    )
    run.add_argument(
        "--first-half-only", action="store_true", help="stop after Transform (no training)"
    )


class ConfigError(ValueError):
    """An invalid command-line option or combination of options."""


def config_from_args(args: argparse.Namespace):  # -> PipelineConfig (imported lazily)
    """Build the PipelineConfig of an `idpt run` command line.

    Raises:
      ConfigError: an invalid option value, with the fix.
    """
    try:
        config = _config_from_args(args)
    except ValueError as error:
        raise ConfigError(str(error)) from error

    # Checked here because the pipeline would otherwise find out only at Stage II, after
    # ingestion and Transform. A store without a blessed Stage I model still fails there.
    if config.training.skip_stage1 and not os.path.exists(config.metadata_path):
        raise ConfigError(
            "--skip-stage1 warm-starts from a blessed Stage I model of an earlier run of this "
            f"dataset, but there is no earlier run: {config.metadata_path} does not exist. "
            "Run once without --skip-stage1, or pass the --output and --dataset of that run."
        )
    return config


def _config_from_args(args: argparse.Namespace):
    from tfx_pipeline import config as config_lib
    from transforms.preprocessing import PreprocessingConfig

    data = args.data or config_lib.DEFAULT_DATA
    data_format = args.format or detect_format(data)
    mapping = _mapping(args, data_format)
    split = config_lib.SplitConfig(
        fractions=_fractions(args.split_fractions),
        train_end=args.train_end,
        eval_end=args.eval_end,
        pretrain_end=args.pretrain_end,
    )
    thresholds_default, thresholds = _per_feature(args.frequency_threshold, "--frequency-threshold")
    top_k_default, top_ks = _per_feature(args.top_k, "--top-k")
    preprocessing = PreprocessingConfig(
        frequency_threshold=(
            features.DEFAULT_FREQUENCY_THRESHOLD
            if thresholds_default is None
            else thresholds_default
        ),
        top_k=top_k_default,
        frequency_thresholds=thresholds,
        top_ks=top_ks,
    )
    return config_lib.PipelineConfig(
        data=data,
        data_format=data_format,
        mapping=mapping,
        output_dir=args.output,
        split=split,
        preprocessing=preprocessing,
        beam_pipeline_args=config_lib.merge_beam_args(
            config_lib.DEFAULT_BEAM_PIPELINE_ARGS, args.beam_arg
        ),
        anomaly_severity=args.anomalies,
        epochs=args.epochs,
        enable_cache=not args.no_cache,
        dataset=args.dataset,
        training=_training_config(args),
        first_half_only=args.first_half_only,
    )


def _training_config(args: argparse.Namespace):
    from tfx_pipeline.training import TrainingConfig

    defaults = TrainingConfig()
    stage1 = dataclasses.replace(defaults.stage1, epochs=args.epochs)
    if args.embedding_dim is not None:
        stage1 = dataclasses.replace(stage1, embedding_dim=args.embedding_dim)
    if args.stage1_batch_size is not None:
        stage1 = dataclasses.replace(stage1, batch_size=args.stage1_batch_size)
    stage2 = defaults.stage2
    if args.stage2_variant is not None:
        stage2 = dataclasses.replace(stage2, variant=args.stage2_variant)
    if args.stage2_steps is not None:
        stage2 = dataclasses.replace(stage2, steps_per_epoch=args.stage2_steps)
    retrieval_gate = defaults.retrieval_gate
    if args.min_recall is not None:
        retrieval_gate = dataclasses.replace(retrieval_gate, floor=args.min_recall)
    ranking_gate = defaults.ranking_gate
    if args.min_auc is not None:
        ranking_gate = dataclasses.replace(ranking_gate, min_auc=args.min_auc)
    return TrainingConfig(
        stage1=stage1,
        stage2=stage2,
        retrieval_gate=retrieval_gate,
        ranking_gate=ranking_gate,
        skip_stage1=args.skip_stage1,
        serving_dir=os.path.abspath(args.serving_dir) if args.serving_dir else "",
    )


def _mapping(args: argparse.Namespace, data_format: str) -> ColumnMapping | None:
    if not args.mapping_file and not args.mapping:
        return None
    base = readers.default_mapping(data_format)
    if args.mapping_file:
        base = ColumnMapping.from_file(args.mapping_file)
    return ColumnMapping.from_cli(args.mapping, base=base) if args.mapping else base


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(
            f"--split-fractions {text!r} is invalid: give three numbers, e.g. 0.8,0.1,0.1."
        )
    return values


def _per_feature(items: Sequence[str], option: str) -> tuple[int | None, dict[str, int]]:
    """Parse "N" (all features) and "FEATURE=N" items into (default, per-feature)."""
    default, per_feature = None, {}
    for item in items:
        name, separator, value = item.rpartition("=")
        if not value.strip().isdigit():
            raise ValueError(f"{option} {item!r} is invalid: use N or FEATURE=N with an integer N.")
        if separator:
            per_feature[name] = int(value)
        else:
            default = int(value)
    return default, per_feature


def _run(args: argparse.Namespace) -> int:
    from absl import logging

    from tfx_pipeline import local_runner, run_report

    config = config_from_args(args)
    log_path = local_runner.configure_logging(config)
    logging.info("Full log of this run: %s", log_path)
    run_report.remove_report(config.dataset_dir)
    local_runner.run(config)
    report, json_path = run_report.write_full_report(config)
    sys.stdout.write(report.to_text())
    logging.info("Run report written to %s.", json_path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import logging

    from tfx_pipeline import benchmarks

    # Progress lines, because the full Stage I benchmark alone took 9 minutes on 2 cores.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    benchmarks.LOGGER.addHandler(handler)
    benchmarks.LOGGER.setLevel(logging.INFO)
    benchmarks.LOGGER.propagate = False
    results = benchmarks.run_all(args.output, quick=args.quick, only=args.only)
    sections = benchmarks.write_markdown(results, args.markdown, quick=args.quick)
    sys.stdout.write("\n".join(sections))
    sys.stdout.write(f"\nBenchmark figures written to {os.path.abspath(args.markdown)}\n")
    return 0


def _compile_kfp(args: argparse.Namespace) -> int:
    # The Kubeflow runner is imported by name: it is the one entry point that
    # uses kubeflow/, and no pipeline code depends on it.
    runner = importlib.import_module("kubeflow.runner")
    config = config_from_args(args)
    target = runner.KubeflowTarget(
        image=args.image,
        pipeline_root=args.pipeline_root,
        serving_dir=args.serving_dir or args.pipeline_root.rstrip("/") + "/serving",
    )
    path = runner.compile_pipeline(config, target, args.spec)
    sys.stdout.write(f"Kubeflow pipeline spec written to {path}\n")
    return 0


def _serving_command(name: str):
    def run_command(args: argparse.Namespace) -> int:
        from serving import commands as serving_commands

        return getattr(serving_commands, name)(args) or 0

    return run_command


_COMMANDS = {
    "run": lambda args: _run(args),
    "bench": lambda args: _bench(args),
    "compile-kfp": lambda args: _compile_kfp(args),
    "serve": _serving_command("serve_main"),
    "recommend": _serving_command("recommend_main"),
    "serving-config": _serving_command("serving_config_main"),
}


def _input_errors() -> tuple[type[Exception], ...]:
    """Return the exception types that report bad input or configuration, not a bug."""
    from tfx_pipeline.components.ingestion import EmptySplitError
    from tfx_pipeline.schema import AnomaliesError, SchemaCurationError
    from transforms.log_mapping import LogFormatError
    from transforms.preprocessing import EmptyVocabularyError

    return (
        ConfigError,
        LogFormatError,
        EmptySplitError,
        SchemaCurationError,
        AnomaliesError,
        EmptyVocabularyError,
        FileNotFoundError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `idpt` command line; return the exit status.

    Known input errors (an unreadable log, an empty split window, anomalies, an
    empty vocabulary) end with their message on stderr and status 1, not a traceback.
    """
    args = _build_parser().parse_args(argv)
    input_errors = _input_errors()
    try:
        return _COMMANDS[args.command](args)
    except input_errors as error:
        sys.stderr.write(f"idpt {args.command}: error: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
