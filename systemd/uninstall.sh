#!/usr/bin/env bash
# Remove the Gondola shelf-unit service. Keeps /etc/shelfd, /var/lib/shelfd (outbox,
# calibration), credentials and the shelfd user unless --purge. Takes --root DIR like install.sh.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/install.sh" --uninstall "$@"
