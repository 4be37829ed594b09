# The mesh-canary image: the controller (and every CLI command) on a slim Python.
# Build and publish: docs/image.md. Tag: ghcr.io/mesh-canary/mesh-canary:<version>, the
# version in pyproject.toml; manifests/controller/deployment.yaml names that tag.
#
# Runs as the Deployment's user (uid/gid 65532, non-root) on a read-only root filesystem:
# nothing is written outside /tmp (no bytecode at run time, HOME is /tmp).
# tests/test_image.py builds this file's environment without Docker and runs its entrypoint.
FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mesh-canary" \
      org.opencontainers.image.description="Service-mesh canary controller for ML model services" \
      org.opencontainers.image.source="https://github.com/mesh-canary/mesh-canary" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /build
COPY pyproject.toml README.md ./
COPY mesh_canary ./mesh_canary
# One install command (the test runs the same one): the package and its dependencies, then
# the sources are gone; bytecode is compiled here, once, since the root filesystem is read-only.
RUN pip install --no-cache-dir --compile . && rm -rf /build

RUN groupadd --system --gid 65532 mesh-canary \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mesh-canary

WORKDIR /tmp
USER 65532:65532
# /livez, /readyz and /metrics (the Deployment's containerPort "http").
EXPOSE 8080

ENTRYPOINT ["mesh-canary"]
CMD ["controller", "--metrics-addr", ":8080", "--bind-address", "0.0.0.0"]
