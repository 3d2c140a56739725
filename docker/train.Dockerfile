# MIMEA training image (CPU): torch from the PyTorch CPU index, faiss-cpu.
#
#   docker build -f docker/train.Dockerfile -t mimea-train:cpu .
#   docker run --rm -v "$PWD/demo/data:/data:ro" -v mimea_checkpoints:/checkpoints \
#     mimea-train:cpu --data /data --out /checkpoints/current
#
# The entrypoint is `mimea train`; arguments given to the container are its options.

FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python3.11 -m venv /opt/venv && pip install --upgrade pip

WORKDIR /src

COPY pyproject.toml docker/requirements.py ./
RUN set -eux; \
    pip install --index-url "$TORCH_INDEX_URL" \
        "$(python requirements.py pyproject.toml --only torch)"; \
    python requirements.py pyproject.toml --faiss cpu --exclude torch > /tmp/requirements.txt; \
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
    mkdir -p /checkpoints /data; \
    chown mimea:mimea /checkpoints

USER mimea
WORKDIR /home/mimea

ENTRYPOINT ["mimea", "train"]
