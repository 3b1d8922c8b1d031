# A deployable image: the rig worker image with your Feast repo and your models baked in.
#
#   docker build -f deploy/docker/bundle.Dockerfile -t my-rig:1 BUNDLE_DIR
#
# BUNDLE_DIR holds `feast/` (feature_store.yaml, features.py: the worker reads only the definitions;
# features come from Redis) and `models/` (what `rig train` wrote to RIG_HOME/models: every version
# the routing may name, with its transforms). deploy/README.md shows how to fill it.
ARG WORKER_IMAGE=prediction-rig:0.1.0
FROM ${WORKER_IMAGE}

# Root-owned and read-only for the worker, which only reads them.
COPY feast/ /etc/rig/feast/
COPY models/ /var/lib/rig/models/
ENV RIG_FEAST_REPO=/etc/rig/feast \
    RIG_TRANSFORM_SPEC=/etc/rig/feast/transform.json
