"""The environment matches the lock, Keras 2 is enforced, and the package builds."""

import importlib.metadata
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "requirements.lock"
PACKAGES = ("tfx_pipeline", "trainer", "transforms", "serving", "kubeflow")


def read_lock() -> dict[str, str]:
    pins = {}
    for line in LOCK_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, version = line.split("==")
        pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def test_lock_pins_required_stack():
    pins = read_lock()

    assert pins["tfx"] == "1.21.0"
    assert pins["tensorflow"].startswith("2.21.")
    assert pins["tf-keras"].startswith("2.21.")
    assert pins["tensorflow-recommenders"] == "0.7.7"
    for name in ("tensorflow-transform", "tensorflow-data-validation", "ml-metadata", "tfx-bsl"):
        assert pins[name].startswith("1.21."), name
    assert pins["tensorflow-model-analysis"].startswith("0.52.")
    assert pins["kfp"].startswith("2.16.")
    assert pins["tensorflow-serving-api"] == "2.19.1"


def test_installed_set_equals_lock():
    installed = {
        canonical(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    installed.pop("pip", None)

    assert installed == read_lock()


def test_python_is_313():
    assert sys.version_info[:2] == (3, 13)


def test_kubeflow_v2_runner_imports():
    from tfx.v1.orchestration.experimental import KubeflowV2DagRunner

    assert KubeflowV2DagRunner.__name__ == "KubeflowV2DagRunner"


def test_entry_point_gets_tf_keras():
    # The CLI module sets TF_USE_LEGACY_KERAS itself, even when the caller did not.
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    code = (
        "import tfx_pipeline.cli\n"
        "import tensorflow as tf\n"
        "from transforms.keras_guard import ensure_legacy_keras\n"
        "ensure_legacy_keras()\n"
        "print(tf.keras.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


def test_keras_guard_rejects_keras_3():
    code = (
        "from transforms.keras_guard import ensure_legacy_keras\n"
        "try:\n"
        "    ensure_legacy_keras()\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = run_python(code, TF_USE_LEGACY_KERAS="0")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "IDPT needs Keras 2 (tf_keras) but tf.keras is Keras 3.15.1. "
        "Set TF_USE_LEGACY_KERAS=1 before anything imports TensorFlow and install "
        "tf-keras; the idpt command, make run and make test set it for you."
    )


def dockerfile_commands() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_dockerfile_installs_exactly_the_lock():
    commands = dockerfile_commands()
    pip_installs = [
        segment.strip()
        for command in commands
        if command.startswith("RUN ")
        for segment in command[4:].split("&&")
        if segment.strip().startswith("pip install")
    ]

    assert commands[0] == "FROM python:3.13-slim-trixie"
    assert any(
        "TF_USE_LEGACY_KERAS=1" in command for command in commands if command.startswith("ENV")
    )
    assert "COPY requirements.lock ./" in commands
    # Two installs only: the lock without dependency resolution, then the package itself.
    assert [shlex.split(install) for install in pip_installs] == [
        ["pip", "install", "--no-cache-dir", "--no-deps", "-r", "requirements.lock"],
        ["pip", "install", "--no-cache-dir", "--no-deps", "."],
    ]


@pytest.mark.timeout(600)
def test_wheel_holds_packages_and_console_script(tmp_path):
    # Build from a copy so setuptools' build/ and egg-info never land in the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=ignore)
    for name in ("setup.py", "requirements.in", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr

    wheel = next(tmp_path.glob("idpt-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        console = archive.read(entry_points).decode()

    top_level = {name.split("/")[0] for name in names if "/" in name}
    assert {package for package in PACKAGES} <= top_level
    assert "tests" not in top_level
    assert "idpt = tfx_pipeline.cli:main" in console
    assert not any(name.startswith("movielens") or "/u.data" in name for name in names)
