# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/install-deps.sh: when the frontend's
# npm dependencies need installing.

# frontend_needs_npm_ci DIR: true when DIR has a package-lock.json and DIR's
# node_modules is missing or older than it (npm keeps a copy of the lockfile
# it installed as node_modules/.package-lock.json).
frontend_needs_npm_ci() {
  local dir=$1
  [[ -f $dir/package-lock.json ]] || return 1
  [[ -d $dir/node_modules ]] || return 0
  [[ $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]
}
