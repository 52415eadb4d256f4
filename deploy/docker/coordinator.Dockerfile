# syntax=docker/dockerfile:1
# The Horde Network coordinator: the HTTP API, without torch.
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t horde-network/coordinator .   (from the repo root)
#   docker run -p 7001:7001 -v horde-data:/var/lib/horde horde-network/coordinator
#   docker run --rm -v horde-data:/var/lib/horde horde-network/coordinator user add alice
#
# Settings come from HORDE_* variables (see `horde-coordinator serve --help`). /var/lib/horde holds
# coordinator.key and secret.key (back them up!), plus the SQLite database and the images unless
# HORDE_DB / HORDE_IMAGES_DIR point elsewhere (HORDE_IMAGES_DIR may be an s3://bucket/prefix).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# coordinator.Dockerfile.dockerignore lets only the project's sources into the context.
COPY . .
# Only the s3 extra (images in a bucket, HORDE_IMAGES_DIR=s3://...): no torch, no diffusers.
RUN python -m venv /opt/horde \
 && /opt/horde/bin/pip install .[s3] \
 && ! /opt/horde/bin/python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="horde-network coordinator" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
RUN groupadd --system --gid 10001 horde \
 && useradd --system --uid 10001 --gid horde --home-dir /var/lib/horde --no-create-home \
            --shell /usr/sbin/nologin horde \
 && install -d -o horde -g horde -m 0700 /var/lib/horde \
 && install -d -o horde -g horde -m 0750 /var/lib/horde-images
COPY --from=build /opt/horde /opt/horde
COPY deploy/docker/healthcheck.py /usr/local/lib/horde/healthcheck.py
ENV PATH=/opt/horde/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HORDE_DATA_DIR=/var/lib/horde \
    HORDE_PORT=7001 \
    HORDE_LOG_FORMAT=json \
    HORDE_LOG_LEVEL=info
USER horde
WORKDIR /var/lib/horde
VOLUME ["/var/lib/horde"]
EXPOSE 7001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/horde/healthcheck.py", "http"]
# `docker run IMAGE user add NAME`, `... audit` etc. replace the default command.
ENTRYPOINT ["horde-coordinator"]
CMD ["serve", "--host", "0.0.0.0"]
