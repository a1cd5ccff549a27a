#!/usr/bin/env bash
# Installs Debian's Chromium (and a font for it to draw text with) for the dashboard's browser
# tests: Playwright drives this system browser and never downloads one of its own.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
