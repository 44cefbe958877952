#!/usr/bin/env bash
# Install everything the tests need, then run them. README.md's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt

# The browser test drives the app in Debian's headless Chromium. Install it when missing and we may
# (root with apt-get); otherwise tests/test_app_ui.py skips that one test and says why.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver for the browser test (log: /tmp/chromium-install.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver; } >/tmp/chromium-install.log 2>&1 \
      || echo "chromium could not be installed (see /tmp/chromium-install.log); the browser test will be skipped"
  else
    echo "chromium is not installed and apt-get cannot run here; the browser test will be skipped"
  fi
fi

python -m pytest -q "$@"
