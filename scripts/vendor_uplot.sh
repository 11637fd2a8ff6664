#!/usr/bin/env bash
# Rebuild the dashboard's charting library from the npm registry: uPlot's own built files
# and its licence, copied into the package's static dir, where they are committed (so that
# `make serve` and the wheel need no Node). Run it to upgrade: change VERSION and
# INTEGRITY (from `npm view uplot@<version> dist.integrity`), run, commit the result.
set -euo pipefail

VERSION=1.6.32
INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
HERE="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="$HERE/src/event_metrics/static/dashboard/assets/vendor"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null)
tarball="$work/uplot-$VERSION.tgz"
# npm checks the tarball against the registry's record; this checks it against ours too.
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "uplot@$VERSION: integrity $got, expected $INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$TARGET"
cp "$work/package/dist/uPlot.iife.min.js" "$TARGET/uPlot.iife.min.js"
cp "$work/package/dist/uPlot.min.css" "$TARGET/uPlot.min.css"
cp "$work/package/LICENSE" "$TARGET/uPlot.LICENSE"
echo "uplot@$VERSION -> $TARGET"
