#!/usr/bin/env bash
# nginx re-resolves the replicas' service name through the container's own DNS server, which differs by
# engine (Docker: 127.0.0.11; podman: the network's gateway), so it is read from /etc/resolv.conf at start.
set -euo pipefail
ns=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
[[ $ns == *:* ]] && ns="[$ns]"
echo "resolver ${ns:-127.0.0.11} valid=5s ipv6=off;" >/tmp/resolver.conf
exec "$@"
