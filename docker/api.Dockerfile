# MIMEA alignment API image.
#
# Default build: GPU image on a CUDA runtime base, torch from PyPI (its Linux x86_64 wheels are
# CUDA builds that ship their own CUDA libraries) and the faiss GPU wheel (extra `gpu`).
#
#   docker build -f docker/api.Dockerfile -t mimea-api:gpu .
#
# CPU build (what the `api-cpu` compose service uses):
#
#   docker build -f docker/api.Dockerfile -t mimea-api:cpu \
#     --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#     --build-arg FAISS=cpu .
#
# Build args:
#   BASE_IMAGE       any Debian/Ubuntu image; Python 3.11 is taken from it when present
#                    (python:3.11-*), otherwise installed from the distribution (Ubuntu 22.04
#                    universe, Debian 12).
#   TORCH_INDEX_URL  package index torch is installed from; e.g. .../whl/cu128 to pin a CUDA
#                    minor version matching the host driver.
#   FAISS            gpu (faiss-gpu-cu12) or cpu (faiss-cpu).
#
# The container serves the checkpoint mounted at /checkpoints/current (see docker-compose.yml).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG FAISS=gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN set -eux; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3.11 -m venv /opt/venv; \
    pip install --upgrade pip

WORKDIR /src

# Dependencies first, in their own layer: source edits do not reinstall torch.
COPY pyproject.toml docker/requirements.py ./
RUN set -eux; \
    pip install --index-url "$TORCH_INDEX_URL" \
        "$(python requirements.py pyproject.toml --only torch)"; \
    python requirements.py pyproject.toml --faiss "$FAISS" --exclude torch > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

COPY README.md mimea_cli.py ./
COPY model ./model
COPY training ./training
COPY service ./service
RUN set -eux; \
    pip install --no-deps .; \
    rm -rf /src/build /src/*.egg-info; \
    useradd --system --uid 10001 --user-group --create-home --shell /usr/sbin/nologin mimea; \
    mkdir -p /checkpoints; \
    chown mimea:mimea /checkpoints

USER mimea
WORKDIR /home/mimea
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

ENTRYPOINT ["mimea", "serve", "--checkpoint", "/checkpoints/current", "--host", "0.0.0.0", "--port", "8000"]
