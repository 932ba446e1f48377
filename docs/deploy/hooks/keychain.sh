#!/bin/sh
# meshgate hook: a signing keychain of the build's own, so concurrent builds never share (or lock,
# or race on) the login keychain.
#
#   before_build: creates the keychain at $MESHGATE_KEYCHAIN (inside the build's folder) with a
#     random password, unlocks it for six hours, puts it first in the user's keychain search list
#     and, if SIGNING_P12 names a .p12 file (password in the file SIGNING_P12_PASSWORD_FILE),
#     imports the signing identity into it for codesign.
#   after_build: takes it out of the search list and deletes it (also after a setup that failed
#     half-way).
#
# In the build script, sign with it explicitly, so nothing depends on the search list:
#   xcodebuild … OTHER_CODE_SIGN_FLAGS="--keychain=$MESHGATE_KEYCHAIN"
# The search list is per user: with more than one slot, two builds may edit it at once; the
# explicit --keychain above is what keeps their signing apart.
#
# scripts.toml:  [hooks]
#                before_build = ["/Users/builder/.meshgate/hooks/keychain.sh"]
#                after_build = ["/Users/builder/.meshgate/hooks/keychain.sh"]
set -eu

keychain="${MESHGATE_KEYCHAIN:?run me as a meshgate hook}"
password_file="${MESHGATE_RESULT_DIR:?run me as a meshgate hook}/keychain.password"

# The user's search list without the build's keychain, one path per line.
others() {
  security list-keychains -d user | sed -e 's/^[[:space:]]*"//' -e 's/"[[:space:]]*$//' | grep -v -x -F "$keychain" || true
}

case "${MESHGATE_HOOK:?run me as a meshgate hook}" in
before_build)
  umask 077
  LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$password_file"
  password="$(cat "$password_file")"
  security create-keychain -p "$password" "$keychain"
  security set-keychain-settings -lut 21600 "$keychain"
  security unlock-keychain -p "$password" "$keychain"
  # shellcheck disable=SC2046 # one argument per keychain path (paths hold no spaces here)
  security list-keychains -d user -s "$keychain" $(others)
  if [ -n "${SIGNING_P12:-}" ]; then
    security import "$SIGNING_P12" -k "$keychain" -P "$(cat "${SIGNING_P12_PASSWORD_FILE:?}")" \
      -T /usr/bin/codesign -T /usr/bin/security
    security set-key-partition-list -S apple-tool:,apple:,codesign: -s -k "$password" "$keychain" >/dev/null
  fi
  echo "keychain $keychain ready"
  ;;
after_build)
  # shellcheck disable=SC2046
  security list-keychains -d user -s $(others) || true
  if [ -e "$keychain" ]; then
    security delete-keychain "$keychain"
  fi
  rm -f "$password_file"
  echo "keychain $keychain removed"
  ;;
*)
  echo "unknown hook ${MESHGATE_HOOK}" >&2
  exit 2
  ;;
esac
