#!/usr/bin/env bash
# Run a command with a display: the user's own when there is one, else a virtual Xvfb screen.
set -euo pipefail
if [ -n "${DISPLAY:-}" ] && [ -z "${CI:-}" ]; then
  exec "$@"
fi
if command -v xvfb-run >/dev/null; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" "$@"
fi
echo "warning: no display and no xvfb-run; GUI parts will be skipped" >&2
exec "$@"
