#!/bin/sh
# meshgate hook: both hooks beside this file, in order. Before a build: clean simulators, then the
# build's keychain. After it: the keychain goes first, then the simulators; both always run, and
# a failure of either is reported with the result.
#
# scripts.toml:  [hooks]
#                before_build = ["/Users/builder/.meshgate/hooks/around-build.sh"]
#                after_build = ["/Users/builder/.meshgate/hooks/around-build.sh"]
set -u
here="$(cd "$(dirname "$0")" && pwd)"
case "${MESHGATE_HOOK:?run me as a meshgate hook}" in
before_build)
  "$here/simulators.sh" && "$here/keychain.sh"
  ;;
after_build)
  status=0
  "$here/keychain.sh" || status=$?
  "$here/simulators.sh" || status=$?
  exit "$status"
  ;;
esac
