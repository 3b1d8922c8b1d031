# The rig worker image: `docker build -t prediction-rig:0.1.0 .` (deploy/README.md tells the rest).
#
# One image for every role (`rig-worker`) and for the `rig` / `rig-sim` commands. It holds the code and
# the repo's Feast definitions (examples/synthetic_world); the models and your own Feast repo are mounted or baked on
# top (deploy/docker/bundle.Dockerfile). Runs as uid 10001; only RIG_HOME (/var/lib/rig) is written.
# The build stage has the C compiler that the extensions (rig/wire/_avro.c, rig/features/_replies.c)
# are built with; the image that runs has none. Both stages are Debian bookworm with Python in /usr/local: the venv and the
# built extension run unchanged in the second.
FROM python:3.11-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The project, installed with pip from the source tree. Editable on purpose: rig.wire.codec reads the
# Avro schemas from schemas/ beside the packages (and sim reads examples/synthetic_world), so the code runs from /app
# rather than from a copy in site-packages. /app stays owned by root: the worker never writes there.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY examples/synthetic_world/feature_store.yaml examples/synthetic_world/features.py examples/synthetic_world/transform.json ./examples/synthetic_world/
COPY rig ./rig
COPY streams ./streams
COPY sim ./sim
RUN python -m venv /opt/rig/venv \
    && /opt/rig/venv/bin/pip install --no-cache-dir -e . \
    && /opt/rig/venv/bin/python -m compileall -q rig streams sim

FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/rig/venv \
    PATH=/opt/rig/venv/bin:$PATH

RUN groupadd --system --gid 10001 rig \
    && useradd --system --uid 10001 --gid rig --home-dir /var/lib/rig --no-create-home \
       --shell /usr/sbin/nologin rig \
    && install -d -o rig -g rig -m 0750 /var/lib/rig /var/lib/rig/models /var/lib/rig/join /var/lib/rig/faust

COPY --from=build /opt/rig/venv /opt/rig/venv
COPY --from=build /app /app

# Every setting is a RIG_* variable (rig/config.py). RIG_HOME holds the models (RIG_HOME/models), the
# join's RocksDB state (RIG_HOME/join), Faust's data and, without RIG_METADATA_URL, the SQLite metadata.
# The web server listens on every interface: the probes and other containers must reach it.
ENV RIG_HOME=/var/lib/rig \
    RIG_FEAST_REPO=/app/examples/synthetic_world \
    RIG_TRANSFORM_SPEC=/app/examples/synthetic_world/transform.json \
    RIG_WEB_BIND=0.0.0.0 \
    RIG_WEB_PORT=6066 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /var/lib/rig
USER 10001:10001
EXPOSE 6066

# /healthz answers while the worker's event loop runs; the web server starts once the models are
# loaded and the routing is read (a broker that is away at start-up is waited for), hence the long
# start period. Kubernetes ignores this and uses the Deployment's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RIG_WEB_PORT', '6066'), timeout=4)"]

# Exec form: the worker is PID 1 and gets SIGTERM itself (it finishes its open batches, commits,
# then exits). It exits 75 on a stall it cannot heal and 70 on an unexpected error: restart it.
CMD ["rig-worker"]
