# Component image for the IDPT pipeline on Kubeflow Pipelines v2 and Vertex AI.
# Debian 13 (trixie) with Python 3.13: ml-metadata and TFDV 1.21 ship
# manylinux_2_39 wheels only, so the base needs glibc >= 2.39.
FROM python:3.13-slim-trixie

# Keras 2 (tf_keras) everywhere: TFRS 0.7.7 and TFMA do not work with Keras 3.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# pyfarmhash, a tensorflow-transform dependency, is an sdist and needs a compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/idpt
COPY requirements.lock ./
# --no-deps: the lock alone decides every version; pip check proves it is complete.
RUN pip install --no-cache-dir --no-deps -r requirements.lock && pip check

COPY setup.py requirements.in README.md LICENSE ./
COPY tfx_pipeline ./tfx_pipeline
COPY trainer ./trainer
COPY transforms ./transforms
COPY serving ./serving
COPY kubeflow ./kubeflow
# The compiled pipeline spec sets each container's command (the TFX v2 executor).
RUN pip install --no-cache-dir --no-deps . && python -c "import tfx_pipeline.cli"

