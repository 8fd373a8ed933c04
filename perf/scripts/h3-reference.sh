#!/usr/bin/env bash
# HTTP/3: the appliance against the tokio + quinn + h3 reference (issue #8); the commands
# recorded in perf/RESULTS.md name this script. See http-reference.sh.
PROTOCOL=h3 exec "$(dirname "${BASH_SOURCE[0]}")/http-reference.sh" "$@"
