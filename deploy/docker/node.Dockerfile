# syntax=docker/dockerfile:1
# A Horde Network GPU node: `horde-node run`, settings from HORDE_NODE_* variables.
#
#   docker build -f deploy/docker/node.Dockerfile -t horde-network/node .   (from the repo root)
#   docker run --gpus all --env-file deploy/env/node.env \
#       -v horde-node:/var/lib/horde-node -v hf-cache:/var/cache/huggingface horde-network/node
#
# The base image brings Python 3.11, CUDA, cuDNN and a CUDA build of torch; the host needs the NVIDIA
# driver and the NVIDIA Container Toolkit. For newer GPUs (e.g. Blackwell, CUDA 12.8) pass
# --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda12.8-cudnn9-runtime.
#   /var/lib/horde-node       config.toml (optional), node.key (the node's identity), spool/, loras/
#   /var/cache/huggingface    downloaded model weights (large; keep it on a volume)

ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="horde-network node" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# node.Dockerfile.dockerignore lets only the project's sources into the context.
COPY . .
# Keep the base image's torch: pin it so that pip fails loudly rather than pull a second multi-GB
# torch. The check after the install makes sure torch is still a CUDA build.
RUN python -c "import sys; assert sys.version_info >= (3, 11), sys.version" \
 && { python -m pip freeze --all | grep -iE '^torch==' || true; } > /tmp/keep-torch.txt \
 && python -m pip install --constraint /tmp/keep-torch.txt ".[node]" \
 && python -c "import torch, diffusers; assert torch.backends.cuda.is_built(), 'torch lost CUDA'" \
 && command -v horde-node \
 && cd / && rm -rf /src /tmp/keep-torch.txt
RUN groupadd --system --gid 10001 horde \
 && useradd --system --uid 10001 --gid horde --home-dir /var/lib/horde-node --no-create-home \
            --shell /usr/sbin/nologin horde \
 && install -d -o horde -g horde -m 0700 /var/lib/horde-node \
 && install -d -o horde -g horde -m 0755 /var/cache/huggingface
COPY deploy/docker/healthcheck.py /usr/local/lib/horde/healthcheck.py
ENV PYTHONUNBUFFERED=1 \
    HORDE_NODE_CONFIG_DIR=/var/lib/horde-node \
    HF_HOME=/var/cache/huggingface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER horde
WORKDIR /var/lib/horde-node
VOLUME ["/var/lib/horde-node", "/var/cache/huggingface"]
# The node only makes outgoing connections: nothing to EXPOSE.
# SIGTERM: finish the jobs in hand and deliver them (allow ~60 s: `docker stop -t 90`);
# a second signal abandons them.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/horde/healthcheck.py", "process", "horde-node"]
# `docker run IMAGE init --register alice`, `... show-config` etc. replace the default command.
ENTRYPOINT ["horde-node"]
CMD ["run"]
