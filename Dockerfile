# syntax=docker/dockerfile:1
# One image for the operator (`keymigration operator ...`) and its worker Jobs
# (`keymigration run ...`): ENTRYPOINT is `keymigration`, the arguments choose the role.
#
#   docker build -t ghcr.io/keymigration/keymigration:0.1.0 .
#
# Base image: a pinned tag, the same in both stages (the venv's python links to the base's).
# For reproducible builds pin its digest too, resolved once with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
# and written as FROM python:3.11.14-slim-bookworm@sha256:<digest> in both stages (Renovate or
# Dependabot then keep tag and digest up to date).
FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# constraints.txt pins every dependency (runtime and test); installing `.` pulls only the
# runtime ones (boto3, cryptography, kopf, kubernetes, tqdm, gmpy2 and theirs), at those pins.
COPY constraints.txt pyproject.toml README.md ./
COPY operator/ operator/
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip check \
    && keymigration --version

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="keymigration" \
      org.opencontainers.image.description="Re-wraps Amazon S3 client-side-encryption data keys under AWS KMS; Kubernetes operator and worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
# The non-root user the Helm chart and the worker Jobs run as (jobs.py RUN_AS); home /tmp, an
# emptyDir in every pod (the root filesystem is read-only).
RUN groupadd --system --gid 65532 keymigration \
    && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin keymigration
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /tmp
# Kubernetes ignores image health checks: the chart probes the operator's /healthz, and the
# workers are batch Jobs.
HEALTHCHECK NONE
ENTRYPOINT ["keymigration"]
CMD ["--help"]
