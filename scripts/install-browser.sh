#!/usr/bin/env bash
# Headless Chromium + chromedriver for the browser end-to-end tests (`pytest -m browser`).
# Debian/Ubuntu; needs root (or sudo). Selenium itself comes with `pip install -e .[dev]`.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium chromium-driver
chromium --version || true
chromedriver --version
