#!/usr/bin/env bash
# Memory per idle live-results subscriber, WebSocket and SSE, in one run: for each kind a fresh
# `votes serve --cores 2 --roles ingest,results,admin` on loopback with an open election, then N
# subscribers from a small asyncio client (handshake, the first event, then idle; spread over 8
# loopback source addresses), and the serve process's RSS before and 2 s after they are all open.
#
#   perf/scripts/subscriber-memory.sh
#   env: N=8000  KINDS="ws sse"  BIN=<dir with release votes>
#
# Both the client and serve hold one socket per subscriber: N stays below the open-files limit.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins -p votes --bin votes
N=${N:-8000}
KINDS=${KINDS:-ws sse}
ulimit -n "$(ulimit -Hn)"
(( N + 200 < $(ulimit -n) )) || { echo "subscriber-memory.sh: N=$N needs more open files than $(ulimit -n)" >&2; exit 1; }
scripts/services.sh up kafka dynamodb redis >/dev/null
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0 VOTES_PREFIX="submem-$(date +%s)-"
"$BIN/votes" init --partitions 2 >/dev/null
HTTP=127.0.0.1:18695 ADMIN=127.0.0.1:19695
SERVE=
trap 'kill $SERVE 2>/dev/null || true' EXIT
for kind in $KINDS; do
  "$BIN/votes" serve --cores 2 --roles ingest,results,admin --http "$HTTP" --admin "$ADMIN" \
    --node-id submem >"target/perf/subscriber-memory-$kind.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 150); do curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
  # The election is made once; the second serve finds it (409 to the create).
  curl -s -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections" \
    -d '{"id":"perf","title":"perf","options":[{"id":"a","label":"A"},{"id":"b","label":"B"}]}'
  curl -s -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections/perf/open"
  python3 - "${HTTP%:*}" "${HTTP#*:}" "$kind" "$N" "$SERVE" <<'PY'
import asyncio, sys
host, port, kind, n, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss_kib():
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
WS = (b'GET /v1/elections/perf/results/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
      b'Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
SSE = b'GET /v1/elections/perf/results/stream HTTP/1.1\r\nHost: x\r\n\r\n'
async def one(i, conns):
    r, w = await asyncio.open_connection(host, port, local_addr=(f'127.0.0.{1 + i % 8}', 0))
    w.write(WS if kind == 'ws' else SSE)
    await w.drain()
    head = await r.readuntil(b'\r\n\r\n')
    assert (b' 101 ' if kind == 'ws' else b' 200 ') in head, head
    await r.read(512)
    conns.append((r, w))
async def main():
    conns, before = [], rss_kib()
    gate = asyncio.Semaphore(200)
    async def gated(i):
        async with gate:
            await one(i, conns)
    await asyncio.gather(*(gated(i) for i in range(n)))
    await asyncio.sleep(2)
    after = rss_kib()
    print(f'{kind}: {len(conns)} subscribers, serve RSS {before} -> {after} KiB: '
          f'{(after - before) / len(conns):.1f} KiB per subscriber')
asyncio.run(main())
PY
  kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
done
