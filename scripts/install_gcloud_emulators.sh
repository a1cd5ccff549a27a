#!/usr/bin/env bash
# Installs the Google Cloud CLI with the Pub/Sub and Firestore emulators and a JRE from
# Google's and Debian's apt repositories (for machines that do not have them yet).
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq apt-transport-https ca-certificates gnupg curl openjdk-17-jre-headless
if ! [ -f /usr/share/keyrings/cloud.google.gpg ]; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | $SUDO gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
    | $SUDO tee /etc/apt/sources.list.d/google-cloud-sdk.list >/dev/null
  $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq google-cloud-cli google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator
