#!/bin/bash
# Render a prompt file with a Kubernetes indexed Job: one pod per shard. This script prints
# the Job's YAML from the variables below, for kubectl:
#
#   examples/k8s/sdgen-indexed-job.sh | kubectl apply -f -
#   SHARDS=4 GPUS=0 CPUS=4 MEMORY=8Gi examples/k8s/sdgen-indexed-job.sh | kubectl apply -f -
#
# Variables [defaults]:
#   NAME         [sdgen-batch]     the Job's name
#   IMAGE        [registry.example.com/sdgen:latest]   an image with sdgen and libtorch
#   SHARDS       [8]               spec.completions: the shards the file is split into
#   PARALLELISM  [4]               pods at once (bounded by the GPUs you have)
#   RETRIES      [3]               retries per shard (backoffLimitPerIndex, Kubernetes 1.29+)
#   GPUS         [1]               nvidia.com/gpu per pod; 0 on CPU-only nodes
#   CPUS         [8]               CPU request
#   MEMORY       [32Gi]            memory request and limit
#   DATA_CLAIM   [sdgen-data]      ReadWriteMany claim mounted at /data: prompts in, images out
#   MODELS_CLAIM [sdgen-models]    claim mounted read-only at /models
#   PROMPTS      [/data/prompts.jsonl]   OUT [/data/out]
#   SDGEN_MODEL  [/models/stable-diffusion-v1-5]
#   STEPS [30]  WIDTH [512]  HEIGHT [512]  SEED [1234]  BATCH_SIZE [4]
#   SDGEN_ARGS   []                more `sdgen batch` flags, space-separated
#
# How it fits together:
# - completionMode: Indexed gives every pod JOB_COMPLETION_INDEX = 0 .. SHARDS-1, and the pod
#   gets SDGEN_SHARD_COUNT = SHARDS; sdgen takes the lines whose index mod SHARDS equals its
#   index: shard i of n. Both come from SHARDS here, so they cannot disagree.
# - All pods write into one shared volume (ReadWriteMany). Each shard keeps its own manifest
#   (manifest-shard-<i>-of-<n>.jsonl) and holds a lock on it while running; the volume must
#   support file locks (NFSv4, CephFS and most CSI file drivers do). A run split another way
#   (another SHARDS into the same OUT) with images to render stops with an error.
# - Seeds and file names depend only on --seed and the line, so a pod that is retried after a
#   crash or eviction skips the images already done and redoes only missing, damaged or
#   failed ones. A non-zero exit (some images failed) makes Kubernetes retry that index, up to
#   RETRIES times. To redo one shard later, run a pod with SDGEN_SHARD=i/SHARDS.
# - When the Job is complete, run the same command with --merge (for example in a one-off pod)
#   for a report of done / failed / missing lines and a merged manifest.jsonl.
set -euo pipefail

SHARDS=${SHARDS:-8}
GPUS=${GPUS:-1}
args=(
    "--model=${SDGEN_MODEL:-/models/stable-diffusion-v1-5}"
    "--out=${OUT:-/data/out}"
    "--seed=${SEED:-1234}"
    "--steps=${STEPS:-30}"
    "--width=${WIDTH:-512}"
    "--height=${HEIGHT:-512}"
    "--batch-size=${BATCH_SIZE:-4}"
)
# shellcheck disable=SC2206 # SDGEN_ARGS is a list of flags
args+=(${SDGEN_ARGS:-} --json)

gpu_limit=""
if [[ $GPUS != 0 ]]; then
    gpu_limit="
              nvidia.com/gpu: $GPUS"
fi

cat <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: ${NAME:-sdgen-batch}
spec:
  completionMode: Indexed
  completions: $SHARDS
  parallelism: ${PARALLELISM:-4}
  backoffLimitPerIndex: ${RETRIES:-3}
  maxFailedIndexes: $SHARDS
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: sdgen
          image: ${IMAGE:-registry.example.com/sdgen:latest}
          command: ["sdgen", "batch", "${PROMPTS:-/data/prompts.jsonl}"]
          args:
$(printf '            - "%s"\n' "${args[@]}")
          env:
            - name: SDGEN_SHARD_COUNT
              value: "$SHARDS"
          resources:
            requests:
              cpu: "${CPUS:-8}"
              memory: ${MEMORY:-32Gi}
            limits:
              memory: ${MEMORY:-32Gi}$gpu_limit
          volumeMounts:
            - name: data
              mountPath: /data
            - name: models
              mountPath: /models
              readOnly: true
      volumes:
        - name: data
          persistentVolumeClaim:
            claimName: ${DATA_CLAIM:-sdgen-data}
        - name: models
          persistentVolumeClaim:
            claimName: ${MODELS_CLAIM:-sdgen-models}
YAML
