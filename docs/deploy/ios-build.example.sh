#!/bin/sh
# A build script for a meshgate node: checks the branch out into the build's own folder (the
# working directory, so the commit is found), runs the tests with the build's Xcode and keychain,
# and leaves the result bundle and the archive as artifacts. `chmod +x` it.
#
# scripts.toml:  [scripts.ios-build]
#                command = ["/Users/builder/ci/ios-build.sh"]
#                environment: REPO_URL, SCHEME and DESTINATION below, or edit them here.
set -eu

REPO_URL="${REPO_URL:-git@github.com:example/app.git}"
SCHEME="${SCHEME:-App}"
DESTINATION="${DESTINATION:-platform=iOS Simulator,name=iPhone 16}"

echo "building ${MESHGATE_ISSUE_ID} at ${MESHGATE_GIT_REF} with Xcode ${MESHGATE_XCODE_VERSION:-(default)}"
# Into this folder (the build's work dir), not a subfolder: meshgate reads the commit from here.
git clone --quiet --depth 1 --branch "$MESHGATE_GIT_REF" "$REPO_URL" .
git rev-parse HEAD >"$MESHGATE_RESULT_DIR/commit-sha"

signing=""
if [ -e "${MESHGATE_KEYCHAIN:-}" ]; then
  signing="OTHER_CODE_SIGN_FLAGS=--keychain=$MESHGATE_KEYCHAIN"
fi
status=0
# shellcheck disable=SC2086 # $signing is one word or none
xcodebuild test -scheme "$SCHEME" -destination "$DESTINATION" \
  -resultBundlePath "$MESHGATE_WORK_DIR/build/Tests.xcresult" $signing || status=$?

# The result bundle is a folder: zipped, it is an artifact (kept even when the tests fail).
if [ -d build/Tests.xcresult ]; then
  ditto -c -k --keepParent build/Tests.xcresult "$MESHGATE_ARTIFACTS_DIR/Tests.xcresult.zip"
fi
exit "$status"
