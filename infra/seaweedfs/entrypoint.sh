#!/bin/sh
# Renders the S3 identities (infra/seaweedfs/s3-identities.json.template) with the
# keys from the environment, then runs `weed` with the container's arguments.
# The keys never live in a committed file: they come from .env via compose.
set -eu

: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set (run infra/gen-env.sh)}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set (run infra/gen-env.sh)}"
TEMPLATE="${S3_IDENTITIES_TEMPLATE:-/etc/seaweedfs/s3-identities.json.template}"
RENDERED="${S3_IDENTITIES_FILE:-/tmp/s3-identities.json}"

for value in "$S3_ACCESS_KEY" "$S3_SECRET_KEY"; do
  case "$value" in
    *[!A-Za-z0-9_.+/=-]*) echo "S3 keys may only use [A-Za-z0-9_.+/=-]" >&2; exit 64 ;;
  esac
done

umask 077
# Literal replacement (no regex or '&' surprises): awk's index/substr.
awk '
  function repl(s, from, to,    i, out) {
    out = ""
    while ((i = index(s, from)) > 0) { out = out substr(s, 1, i - 1) to; s = substr(s, i + length(from)) }
    return out s
  }
  { line = repl($0, "__S3_ACCESS_KEY__", ENVIRON["S3_ACCESS_KEY"])
    print repl(line, "__S3_SECRET_KEY__", ENVIRON["S3_SECRET_KEY"]) }
' "$TEMPLATE" > "$RENDERED"

exec weed "$@" -s3.config="$RENDERED"
