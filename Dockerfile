# trainer on NVIDIA GPUs: the training command line and the web UI in one image.
#
#   docker build -t trainer .                                   (add --target autotrain for the AutoTrain backend)
#   docker run --gpus all -v "$PWD:/data" -v trainer-runs:/runs -e HF_TOKEN trainer --config /data/my.yaml
#   docker run --gpus all -p 7860:7860 -v trainer-runs:/runs trainer ui
#   docker run --gpus all -p 8000:8000 -v "$PWD:/data" -v trainer-runs:/runs trainer api --models /data/models.yaml \
#       --data-dir /runs/api --host 0.0.0.0 --api-keys /data/keys.txt      (OpenAI's fine-tuning API: docs/coming-from-openai.md)
#
# Volumes: /data (your configs and data), /runs (run directories, the UI's work directory), /cache (models and
# data sets downloaded from the Hub). HF_TOKEN is read from the environment only; nothing stores it.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/trainer \
    HF_HOME=/cache/huggingface \
    TRAINER_CACHE=/cache/trainer \
    TRAINER_WORKDIR=/runs \
    TRAINER_UI_HOST=0.0.0.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's own python3 (3.10) for the virtual environment; package versions follow the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/trainer
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY configs ./configs
COPY ui ./ui
COPY data ./data
COPY docker ./docker
# flash-attn only where a wheel exists for this torch and CUDA (FLASH_ATTN=1), since building it takes an hour.
# ".[gpu,ui,deepspeed,serve,api,postgres]" is this project from the copied source (api, postgres: `trainer api` and
# its --database on PostgreSQL); its dependencies' bounds are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[gpu,ui,deepspeed,serve,api,postgres]" \
    && if [ "${FLASH_ATTN}" = "1" ]; then pip install "flash-attn==${FLASH_ATTN_VERSION}" --no-build-isolation --only-binary=flash-attn; fi

RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /data /runs /cache \
    && chown trainer:trainer /data /runs /cache
USER 1000
VOLUME ["/data", "/runs", "/cache"]
WORKDIR /runs
EXPOSE 7860 8000
HEALTHCHECK --interval=30s --timeout=6s --start-period=120s --retries=3 CMD ["python", "/opt/trainer/docker/healthcheck.py"]
ENTRYPOINT ["trainer"]
CMD ["--help"]

# The same image plus AutoTrain Advanced in its own environment (backend: {name: autotrain}).
FROM gpu AS autotrain
USER 0
RUN trainer backends setup autotrain --venv /opt/autotrain --gpu \
    && chown -R trainer:trainer /opt/autotrain
ENV TRAINER_AUTOTRAIN_VENV=/opt/autotrain
USER 1000
