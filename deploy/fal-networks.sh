#!/usr/bin/env bash
# Write the nginx allow-list of FAL AI's webhook source networks.
#
#   deploy/fal-networks.sh [--meta-url URL] [--output FILE]
#
# Fetches FAL's platform metadata (default https://api.fal.ai/v1/meta), takes its
# "webhook_ip_ranges" (CIDR notation) and fills them into deploy/nginx/fal-networks.conf,
# one `allow` line each. Writes FILE atomically (mode 0644), or prints to stdout. Refuses,
# leaving FILE as it was, when the fetch fails, the list is empty or an entry is not a
# network. Then: nginx -t && systemctl reload nginx.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATE=$HERE/nginx/fal-networks.conf
META_URL=https://api.fal.ai/v1/meta
OUTPUT=""

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --meta-url) META_URL=${2:?--meta-url needs a URL}; shift 2 ;;
    --output) OUTPUT=${2:?--output needs a file}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -f $TEMPLATE ]] || die "template $TEMPLATE is missing"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

python3 - "$META_URL" "$TEMPLATE" >"$tmp" <<'PY' || die "no allow-list written (see above)"
import ipaddress
import json
import sys
import urllib.request

url, template = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=20) as response:
        meta = json.load(response)
except Exception as exc:  # one line for any failure: network, HTTP status, JSON
    sys.exit(f"fal-networks.sh: cannot read {url}: {exc}")
ranges = meta.get("webhook_ip_ranges") if isinstance(meta, dict) else None
if not isinstance(ranges, list) or not ranges:
    sys.exit(f"fal-networks.sh: {url} has no webhook_ip_ranges list")
networks = []
for entry in ranges:
    try:
        networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
    except ValueError:
        sys.exit(f"fal-networks.sh: {entry!r} from {url} is not a network")
for net in networks:
    if net.prefixlen == 0:
        sys.exit(f"fal-networks.sh: {net} would admit everyone; refusing")
lines = [f"# From {url}, webhook_ip_ranges ({len(networks)} networks):"]
lines += [f"allow {net};" for net in networks]
marker = "# @FAL_WEBHOOK_RANGES@"
with open(template, encoding="utf-8") as handle:
    text = handle.read()
if marker not in text:
    sys.exit(f"fal-networks.sh: marker {marker!r} not found in {template}")
sys.stdout.write(text.replace(marker, "\n".join(lines)))
PY

if [[ -z $OUTPUT ]]; then
    cat "$tmp"
else
    chmod 0644 "$tmp"
    mv -f "$tmp" "$OUTPUT"
    trap - EXIT
    printf '%s: wrote %s (%s networks)\n' "$PROG" "$OUTPUT" "$(grep -c '^allow ' "$OUTPUT")"
fi
