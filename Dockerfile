# A first image: trainer on the CPU build of PyTorch. The CUDA image with the GPU extras, a non-root
# user, volumes and a UI health check is the subject of its own issue (cloud GPU and multi-GPU).
#   docker build -t trainer .
#   docker run -v "$PWD:/data" -w /data trainer --config /data/my.yaml
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY configs ./configs
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .
WORKDIR /data
ENTRYPOINT ["trainer"]
CMD ["--help"]
