# syntax=docker/dockerfile:1.7
# plants-mlops images. Targets:
#   runtime  - CPU image: the Kedro project, the CLI, the prediction API and MLflow server.
#   gpu      - CUDA image for the training step on a GPU stack (ZenML `gpu` stack).
# Build: docker build --target runtime -t plants-mlops:cpu .
#        docker build --target gpu -t plants-mlops:gpu .

# Base images are named literally (no ARG): scanners (checkov, hadolint) check the tag.
FROM python:3.11.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEDRO_DISABLE_TELEMETRY=true \
    ZENML_ANALYTICS_OPT_IN=false
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* libgomp1=12.2.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 plants
WORKDIR /app

FROM base AS runtime
# CPU wheels of torch/torchvision keep the image ~5 GB smaller than the CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN grep -vE '^(torch|torchvision|nvidia-|triton|cuda-)' constraints.txt > /tmp/constraints-cpu.txt \
 && pip install --extra-index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1 \
 && pip install -c /tmp/constraints-cpu.txt .
COPY conf ./conf
COPY samples ./samples
RUN mkdir -p data/01_raw data/02_intermediate data/03_primary data/06_models data/08_reporting \
 && chown -R plants:plants /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/health')"]
CMD ["plants-mlops", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS gpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 KEDRO_DISABLE_TELEMETRY=true ZENML_ANALYTICS_OPT_IN=false
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common=0.99.* \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* git=1:2.43.* \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt .
COPY conf ./conf
# the behaviour step's clear cases (behaviour.clear_cases)
COPY samples/behaviour ./samples/behaviour
CMD ["plants-mlops", "pipeline", "run", "--stack", "gpu"]
