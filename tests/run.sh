#!/usr/bin/env bash
# Install everything the tests need, then run them. README.md's test command; .ci/run calls it.
# Packages go into whichever Python `python` is (the active virtual environment, if any); what will
# change is printed before anything is installed. TESTS_NO_INSTALL=1 skips the install.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False  # the tests and the apps they start send no usage analytics

if [ "${TESTS_NO_INSTALL:-0}" != 1 ]; then
  where="$(python -c 'import sys; print(sys.prefix)')"
  if [ -n "${VIRTUAL_ENV:-}" ]; then kind="the active virtual environment"; else
    kind="not a virtual environment: this Python's own packages; use one to keep them apart"; fi
  echo "tests/run.sh: installing requirements-dev.txt into $where ($kind). TESTS_NO_INSTALL=1 skips this."
  plan="$(python -m pip install --dry-run -r requirements-dev.txt 2>&1)" || { echo "$plan"; exit 1; }
  changes="$(grep '^Would install' <<<"$plan" || true)"
  if [ -n "$changes" ]; then
    echo "  $changes"
    python -m pip install -q -r requirements-dev.txt
  else
    echo "  nothing to install: every requirement is already satisfied"
  fi
fi

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
