"""Packaging for IDPT: two-stage contrastive ID pre-training on TFX."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
PACKAGES = ("tfx_pipeline", "trainer", "transforms", "serving", "kubeflow")


def read_requirements() -> list[str]:
    """Return the top-level requirements; requirements.lock pins the resolved set."""
    lines = (HERE / "requirements.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="idpt",
    version="0.1.0",
    description="Two-stage contrastive ID pre-training for recommender ranking models on TFX",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.13,<3.14",
    packages=setuptools.find_packages(include=[f"{name}*" for name in PACKAGES]),
    package_data={"kubeflow": ["*.md"], "transforms": ["fixtures/*/*"]},
    install_requires=[
        requirement
        for requirement in read_requirements()
        if not requirement.startswith(("ruff", "pytest"))
    ],
    extras_require={"test": ["ruff", "pytest", "pytest-timeout"]},
    entry_points={"console_scripts": ["idpt = tfx_pipeline.cli:main"]},
)
