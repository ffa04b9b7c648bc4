#!/usr/bin/env bash
# Print the "node-generic-resources" entries of /etc/docker/daemon.json for this GPU node:
# one "NVIDIA-GPU=<uuid>" per whole GPU, one "NVIDIA-MIG-<profile>=<uuid>" per MIG instance
# (a GPU in MIG mode is advertised only as its instances). Review the output, put it in
# daemon.json, restart dockerd, and list the kinds in the toolkit's swarm-resource.
# Needs nvidia-smi. Reads nothing else and changes nothing.
set -euo pipefail
gpu=""
declare -A mig_of=()
entries=()
while IFS= read -r line; do
    if [[ $line =~ ^GPU\ [0-9]+:.*\(UUID:\ (GPU-[^\)]+)\) ]]; then
        gpu=${BASH_REMATCH[1]}
        entries+=("GPU $gpu")
    elif [[ $line =~ MIG\ ([0-9]+g\.[0-9]+gb).*\(UUID:\ (MIG-[^\)]+)\) ]]; then
        mig_of[$gpu]=1
        entries+=("MIG ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}")
    fi
done < <(nvidia-smi -L)
for entry in "${entries[@]}"; do
    read -r what a b <<<"$entry"
    if [ "$what" = GPU ]; then
        [ -n "${mig_of[$a]:-}" ] || printf '"NVIDIA-GPU=%s",\n' "$a"
    else
        printf '"NVIDIA-MIG-%s=%s",\n' "$a" "$b"
    fi
done
