#!/usr/bin/env bash
# Validates every dashboard under grafana/dashboards/ against Grafana's
# published dashboard schema (the `Dashboard` type of the npm package
# @grafana/schema, checked by `tsc`, versions pinned in
# tools/grafana-schema/package.json), and checks what Grafana's types leave
# open: every panel has a title, a datasource referencing ${datasource} and
# fieldConfig.defaults.unit; the datasource/node/service variables and the
# four rows exist. Writes the metric names the expressions use, sorted, one
# per line, to NAMES_FILE (for the test that compares them with a scrape).
#
#   tools/validate-grafana.sh [NAMES_FILE]     # default: target/grafana-schema/metric-names.txt
#
# Needs node and npm (the first run installs into target/grafana-schema/ from
# the npm registry; later runs are offline). Exits non-zero on any failure.
# GRAFANA_DASHBOARDS="a.json b.json" checks those files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
names=${1:-target/grafana-schema/metric-names.txt}
case "$names" in /*) ;; *) names=$root/$names ;; esac
cache=$root/target/grafana-schema
spec=$root/tools/grafana-schema

command -v node >/dev/null && command -v npm >/dev/null || { echo "validate-grafana: needs node and npm" >&2; exit 1; }
mkdir -p "$cache" "$(dirname "$names")"
if ! cmp -s "$spec/package.json" "$cache/package.json" || [ ! -x "$cache/node_modules/.bin/tsc" ]; then
  cp "$spec/package.json" "$cache/package.json"
  [ -f "$spec/package-lock.json" ] && cp "$spec/package-lock.json" "$cache/package-lock.json"
  (cd "$cache" && npm install --no-audit --no-fund --silent) || { echo "validate-grafana: npm install failed" >&2; exit 1; }
fi

if [ -n "${GRAFANA_DASHBOARDS:-}" ]; then
  read -r -a dashboards <<<"$GRAFANA_DASHBOARDS"
else
  shopt -s nullglob
  dashboards=(grafana/dashboards/*.json)
fi
[ ${#dashboards[@]} -gt 0 ] || { echo "validate-grafana: no dashboards" >&2; exit 1; }

rm -rf "$cache/check"
mkdir -p "$cache/check"
cp "$spec/tsconfig.json" "$cache/check/tsconfig.json"
status=0
node "$spec/check.mjs" "$cache/check" "$names" "${dashboards[@]}" || status=1
if ls "$cache/check"/*.ts >/dev/null 2>&1; then
  if ! (cd "$cache/check" && "$cache/node_modules/.bin/tsc" -p tsconfig.json); then
    echo "FAIL: a dashboard does not match Grafana's Dashboard type (@grafana/schema $(node -p "require('$cache/node_modules/@grafana/schema/package.json').version"); generated files in $cache/check map to: ${dashboards[*]})" >&2
    status=1
  fi
fi
if [ $status -eq 0 ]; then
  echo "validate-grafana: ok: ${dashboards[*]} ($(wc -l <"$names") metric names in $names)"
fi
exit $status
