#!/usr/bin/env bash
# Phase 1 as a Ray Job on a running Ray cluster (KubeRay, `ray up`, or a cluster you started):
# build the radio wheel here, upload it with the job, install it on the nodes, run `radio featurize`.
#
#   examples/cluster/ray_job.sh http://HEAD:8265 --pipeline radio-amp-l --store s3://bucket/store.zarr
#
# The code reaches the nodes as the built wheel: it travels in the job's working_dir, and the
# `pip` runtime env installs it with --no-deps into a virtualenv that inherits the node's Python
# packages (torch, ray, ... must already be on the nodes: use an image built from pyproject.toml's
# dependencies). Every Ray worker of the job, and the entrypoint, run in that virtualenv.
# Inside the job Ray sets RAY_ADDRESS, so `radio featurize` attaches to the cluster; it never
# starts a local instance there.
#
# Needs `ray[default]` on the submitting machine (the Jobs CLI), and the data and the store on
# storage every node can reach (a shared filesystem or an fsspec URL).
# EDIT: the address (first argument, or RAY_API_SERVER_ADDRESS), the featurize options after it.
set -euo pipefail

address=${1:-${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}}
shift || true
repo=$(cd "$(dirname "$0")/../.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

python -m pip wheel -q --no-deps --no-build-isolation -w "$stage" "$repo"  # setuptools from this env
wheel=$(basename "$(ls "$stage"/radio_train-*.whl)")
cp "$repo/pipelines.yaml" "$stage/"  # EDIT: or your own pipelines file

# The working dir is uploaded (the wheel and the pipelines file); pip expands the ${...} on the node.
runtime_env=$(printf '{"working_dir": "%s", "pip": {"packages": ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/%s"], "pip_install_options": ["--no-deps", "--disable-pip-version-check"]}}' "$stage" "$wheel")

# Ray >= 2.59: the client must use the cluster's auth mode/token (RAY_AUTH_MODE, RAY_AUTH_TOKEN).
ray job submit --address "$address" --runtime-env-json "$runtime_env" -- \
    radio featurize --config pipelines.yaml "$@"
