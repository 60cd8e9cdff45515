#!/bin/bash
# One command to HAProxy's runtime API, and its answer. In the compose stack:
#     docker compose exec lb haproxy-api show servers state vllm
#     docker compose exec lb haproxy-api set server vllm/vllm2 state drain
# HAPROXY_API (host:port) defaults to the `stats socket` of deploy/haproxy.cfg.
set -euo pipefail
api=${HAPROXY_API:-127.0.0.1:9999}
exec 3<>"/dev/tcp/${api%:*}/${api##*:}"
printf '%s\n' "$*" >&3
cat <&3
