#!/usr/bin/env bash
# Refreshes the README's screenshots in docs/screenshots/ by running the browser test with its output pointed there.
# Needs Debian's chromium and chromium-driver. The tests themselves write their screenshots under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
B24SENSE_SCREENSHOTS_DIR="$PWD/docs/screenshots" cargo nextest run -p b24sense-web --test browser
