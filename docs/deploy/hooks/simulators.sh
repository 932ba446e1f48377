#!/bin/sh
# meshgate hook: every simulator shut down and erased, so a build starts from clean simulators and
# leaves none booted behind (a stuck simulator is the first cause of "Failed to boot simulator").
# xcrun runs the simctl of the build's Xcode (DEVELOPER_DIR).
#
# For nodes with one slot: `erase all` also erases a simulator another build is using. With more
# slots, create a simulator per build instead (xcrun simctl create "meshgate-$MESHGATE_BUILD_ID" …)
# and delete it in after_build.
#
# scripts.toml:  [hooks]
#                before_build = ["/Users/builder/.meshgate/hooks/simulators.sh"]
#                after_build = ["/Users/builder/.meshgate/hooks/simulators.sh"]
set -eu
xcrun simctl shutdown all || true
xcrun simctl erase all
echo "simulators shut down and erased (${MESHGATE_HOOK:-by hand})"
