#!/usr/bin/env bash
# System packages the tests drive (headless Chromium for the dashboard test, docker-compose to parse the stack).
# Installed once when missing and when we may (root); otherwise the tests that need them say what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing system packages (install as root): ${need[*]}" >&2
  fi
fi
