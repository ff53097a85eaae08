"""Command-line entry points of the serving package: `idpt serve`, `idpt recommend`,
`idpt serving-config`.

Each command is a pair: `add_*_arguments(parser)` declares its options on an argparse
parser, and `*_main(args)` runs it and returns the process exit code. Errors the user can
fix are written to stderr with exit code 2; `recommend` writes its result to stdout as one
JSON object.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import threading
from collections.abc import Callable

from absl import logging

from serving import client as serving_client
from serving import config, history, server
from transforms import features

DEFAULT_PORT = 8500


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `idpt serve`, which runs the local development server."""
    parser.add_argument(
        "--model-base-dir",
        type=pathlib.Path,
        required=True,
        help="folder the pipeline pushes to, holding <model>/<version>/ SavedModels",
    )
    parser.add_argument(
        "--host",
        default=server.DEFAULT_HOST,
        help="address to bind (default %(default)s, loopback only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="gRPC port; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument("--tls-cert", type=pathlib.Path, help="PEM server certificate; serve TLS")
    parser.add_argument("--tls-key", type=pathlib.Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=pathlib.Path,
        help="PEM CA; when set, clients must present a certificate",
    )
    parser.add_argument(
        "--poll-interval-s",
        type=float,
        default=1.0,
        help="seconds between scans for new model versions (default %(default)s)",
    )
    parser.add_argument(
        "--num-versions",
        type=int,
        default=1,
        help="serve the N highest versions of each model (default %(default)s)",
    )


def _tls_files(args: argparse.Namespace) -> server.TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if path is not None and not path.is_file():
            raise ValueError(f"TLS file {path} does not exist")
    return server.TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def serve_main(
    args: argparse.Namespace,
    *,
    stop: threading.Event | None = None,
    on_started: Callable[[server.LocalModelServer], None] | None = None,
) -> int:
    """Run the local server until SIGINT or SIGTERM (or until `stop` is set).

    Args:
        args: parsed `add_serve_arguments` options.
        stop: set it to stop the server; when None, SIGINT and SIGTERM stop it, which
            needs the main thread.
        on_started: called with the running server, e.g. to read its port.

    Returns:
        0 after a clean stop, 1 when the address cannot be bound, 2 for invalid options.
    """
    try:
        tls = _tls_files(args)
        if not args.model_base_dir.is_dir():
            raise ValueError(f"--model-base-dir {args.model_base_dir} is not a folder")
        policy = config.VersionPolicy(num_versions=args.num_versions)
    except ValueError as error:
        sys.stderr.write(f"idpt serve: {error}\n")
        return 2

    stop = stop or _stop_on_signals()
    local_server = server.LocalModelServer(
        args.model_base_dir,
        host=args.host,
        port=args.port,
        version_policy=policy,
        poll_interval_s=args.poll_interval_s,
        tls=tls,
    )
    try:
        local_server.start()
    except RuntimeError as error:
        sys.stderr.write(f"idpt serve: {error}\n")
        return 1
    try:
        if on_started is not None:
            on_started(local_server)
        stop.wait()
    finally:
        local_server.stop()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signal_number, frame) -> None:
        logging.info("Received signal %d; stopping the local model server", signal_number)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `idpt recommend`, which calls a running server."""
    parser.add_argument("--user", required=True, help="user id, the exact string")
    parser.add_argument("--k", type=int, default=10, help="items to return (default %(default)s)")
    parser.add_argument(
        "--target",
        default=serving_client.DEFAULT_TARGET,
        help="host:port of TF Serving or the local server (default %(default)s)",
    )
    parser.add_argument(
        "--num-candidates", type=int, help="rank at most this many retrieved items (default: all K)"
    )
    exclusion = parser.add_mutually_exclusive_group()
    exclusion.add_argument(
        "--history", type=pathlib.Path, help="user history file whose items are excluded"
    )
    exclusion.add_argument(
        "--model-base-dir",
        type=pathlib.Path,
        help="exclude items from the user history exported with the served retrieval version",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=10.0,
        help="deadline per call in seconds (default %(default)s)",
    )
    parser.add_argument("--tls-ca", type=pathlib.Path, help="PEM CA bundle; connect over TLS")


def recommend_main(args: argparse.Namespace) -> int:
    """Print the recommendations for one user as a JSON object on stdout.

    Returns:
        0 on success, 1 when the server call fails, 2 for invalid options.
    """
    if args.k < 1:
        sys.stderr.write(f"idpt recommend: --k {args.k} must be at least 1\n")
        return 2
    root_certificates = args.tls_ca.read_bytes() if args.tls_ca else None
    with serving_client.ServingClient(
        args.target, timeout_s=args.timeout_s, root_certificates=root_certificates
    ) as client:
        try:
            result = _recommend(client, args)
        except (serving_client.ServingError, OSError, ValueError) as error:
            sys.stderr.write(f"idpt recommend: {error}\n")
            return 1
    sys.stdout.write(result.to_json() + "\n")
    return 0


def _recommend(
    client: serving_client.ServingClient, args: argparse.Namespace
) -> serving_client.Recommendations:
    def run(user_history):
        return client.recommend(
            args.user, args.k, num_candidates=args.num_candidates, history=user_history
        )

    if args.history is not None:
        return run(history.read_user_history(args.history))
    if args.model_base_dir is None:
        return run(None)

    # The history must come from the retrieval version that serves the request. If a new
    # version goes live between the status call and the retrieval, rank again with its history.
    version = _live_version(client, client.retrieval_model)
    result = run(_served_history(args.model_base_dir, client.retrieval_model, version))
    if result.retrieval_version != version:
        version = result.retrieval_version
        result = run(_served_history(args.model_base_dir, client.retrieval_model, version))
    return result


def _live_version(client: serving_client.ServingClient, model: str) -> int:
    available = [s.version for s in client.model_status(model) if s.state == "AVAILABLE"]
    if not available:
        raise ValueError(f"model '{model}' has no AVAILABLE version on {client.target}")
    return max(available)


def _served_history(base_dir: pathlib.Path, model: str, version: int) -> dict[str, frozenset[str]]:
    path = history.history_path(base_dir / model / str(version))
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: version {version} of '{model}' has no user history "
            f"({features.USER_HISTORY_FILE}); pass --history or leave out --model-base-dir"
        )
    return history.read_user_history(path)


def add_serving_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `idpt serving-config`, which writes TF Serving files."""
    defaults = config.DeploymentSettings()
    parser.add_argument("--output", type=pathlib.Path, required=True, help="folder to write into")
    parser.add_argument(
        "--model-base-path",
        default=defaults.model_base_path,
        help="push base folder as TF Serving sees it, or a gs:// URI (default %(default)s)",
    )
    parser.add_argument(
        "--image", default=defaults.image, help="TF Serving image (default %(default)s)"
    )
    parser.add_argument("--namespace", default=defaults.namespace, help="Kubernetes namespace")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, help="pod count")
    parser.add_argument(
        "--num-versions",
        type=int,
        default=1,
        help="serve the N highest versions (default %(default)s)",
    )


def serving_config_main(args: argparse.Namespace) -> int:
    """Write models.config, batching.config, monitoring.config and serving.yaml.

    Returns:
        0 on success, 2 for invalid options.
    """
    try:
        settings = config.DeploymentSettings(
            image=args.image,
            namespace=args.namespace,
            replicas=args.replicas,
            model_base_path=args.model_base_path,
        )
        policy = config.VersionPolicy(num_versions=args.num_versions)
    except ValueError as error:
        sys.stderr.write(f"idpt serving-config: {error}\n")
        return 2
    written = config.write_serving_config(args.output, settings, version_policy=policy)
    for path in written.values():
        sys.stdout.write(f"{path}\n")
    return 0
