# syntax=docker/dockerfile:1
# One image for the operator, the node agent and the CLI, for linux/arm64 and linux/amd64:
#   docker buildx build --platform linux/arm64,linux/amd64 -t ghcr.io/armcpu/armcpu:0.1.0 .
# Runtime dependencies are installed from requirements/image.lock (exact versions, hashes, binary
# wheels only), the build tools from requirements/build.lock; nothing of the build stage but the
# virtualenv reaches the final stage. Checked by hadolint in tests/unit/test_image.py.
ARG PYTHON_IMAGE=docker.io/library/python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/ requirements/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: -r requirements/build.lock \
 && python -m venv --without-pip /opt/armcpu \
 && /opt/build/bin/pip --python /opt/armcpu/bin/python install --require-hashes --only-binary=:all: -r requirements/image.lock
COPY pyproject.toml README.md ./
COPY LICENSES/ LICENSES/
COPY armcpu/ armcpu/
COPY armcpu_cli/ armcpu_cli/
COPY armcpu_k8s/ armcpu_k8s/
COPY node_agent/ node_agent/
COPY operator/ operator/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/build/bin/pip --python /opt/armcpu/bin/python install --no-deps --no-compile /tmp/dist/*.whl \
 && /opt/armcpu/bin/python -m compileall -q /opt/armcpu/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="armcpu" \
      org.opencontainers.image.description="Common CPU models for live-migrating KubeVirt VMs across arm64 hosts" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/armcpu /opt/armcpu
ENV PATH=/opt/armcpu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# nonroot; the chart also runs with a read-only root filesystem and /tmp as an emptyDir
USER 65532:65532
WORKDIR /tmp
CMD ["armcpu-operator"]
