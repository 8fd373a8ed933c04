#!/usr/bin/env bash
# Starts, stops and checks the real services that the tests and the demo use (docs/design.md §5),
# each a background daemon listening on 127.0.0.1 only:
#
#   kafka     Apache Kafka 4.3.1, KRaft, broker+controller per node,  9092 (controllers 19092)
#             jars from Maven Central via scripts/kafka/pom.xml       3 nodes: 9092-9094 (19092-19094)
#             one node also: SASL_SSL (TLS + SCRAM-SHA-512)           9097 (see "Kafka's secure
#             listener" below: CA, user and password)
#   dynamodb  DynamoDB API: dynoxide 3.2.0 (crates.io, MIT/Apache-2.0)  8000
#             or moto's server (PyPI, Apache-2.0) with VOTES_DYNAMODB_ENGINE=moto
#   redis     Debian's redis-server, no persistence                   6379
#
# Usage:
#   scripts/services.sh up     [--brokers 1|3] [--session-file FILE] [SERVICE...]
#   scripts/services.sh down   [--session-file FILE] [--wipe] [SERVICE...]
#   scripts/services.sh status [--brokers 1|3] [SERVICE...]
#   scripts/services.sh kafka-topics ARGS...      TopicCommand; --bootstrap-server added if absent
#   scripts/services.sh kafka-run CLASS ARGS...   any main class on the Kafka classpath
#   SERVICE is kafka, dynamodb or redis; none means all three.
#
# Conventions:
# - Everything lives under target/services/ of this checkout (found from this script's path,
#   never from the caller's cwd): logs, pidfiles, Kafka data, the Kafka jars. Two caches are
#   outside, shared by checkouts so a fresh clone starts fast: Maven's ~/.m2 and the DynamoDB
#   engine (dynoxide's binary, or moto's venv) in ~/.cache/votes-services/.
# - `up` is idempotent: a service that already answers its health check is left alone, even if
#   another checkout started it. For Kafka, `up` also restarts the nodes of its cluster that are
#   gone (a fault test that kill -9'd a node runs `up --brokers 3 kafka` to bring it back).
# - The single-node and the 3-node Kafka share port 9092, so they are exclusive: `up` of one
#   while the other runs fails and says to run `down kafka` first. Their data dirs differ.
# - `down` stops only what this checkout started (pidfiles): SIGTERM, then SIGKILL after
#   $SERVICES_STOP_TIMEOUT seconds (30). `down --wipe` also deletes Kafka's and Redis's data.
# - `up --session-file F` appends to F the services that this call started (not those already
#   up); `down --session-file F` stops only the services named in F, then removes F. CI uses it
#   to leave running only what it found running.
# - `status` prints one line per service and exits 0 only if all of them are up.
# - Health checks wait at most $SERVICES_HEALTH_TIMEOUT seconds (90) and print the log tail on
#   failure.
#
# DynamoDB: Amazon's DynamoDB Local is not used: it ships under Amazon's own licence terms, not
# an open-source licence. dynoxide (a Rust server over SQLite) and moto serve the same wire
# protocol (AWS JSON 1.0 over HTTP, SigV4 signed requests), so the Rust SDK only needs the
# endpoint http://127.0.0.1:8000. dynoxide is the default: it writes ~8x and queries ~20-80x
# faster than moto (perf/RESULTS.md), which was what limited the persister and the recount.

set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS=$ROOT/scripts
RUN=$ROOT/target/services

ALL_SERVICES=(kafka dynamodb redis)
# The address Kafka's client listener, the DynamoDB engine and Redis listen on (Kafka also
# advertises it). Loopback unless set: make chaos sets the address of its bridge, so that nodes
# in network namespaces of their own reach the services (scripts/chaos.sh).
HOST=${SERVICES_HOST:-127.0.0.1}
HEALTH_TIMEOUT=${SERVICES_HEALTH_TIMEOUT:-90}
STOP_TIMEOUT=${SERVICES_STOP_TIMEOUT:-30}

KAFKA_PORT=9092             # node i listens on KAFKA_PORT + i
KAFKA_CONTROLLER_PORT=19092 # node i's controller listener is KAFKA_CONTROLLER_PORT + i
# Kafka's secure listener (single node): TLS with a certificate from a CA made here
# (~/.cache/votes-services/kafka-tls/ca.pem), SASL SCRAM-SHA-512 with one user made at each start.
# Test and development credentials only: production clusters are the operator's.
KAFKA_SECURE_PORT=${SERVICES_KAFKA_SECURE_PORT:-9097}
KAFKA_SCRAM_USER=${SERVICES_KAFKA_SCRAM_USER:-votes}
KAFKA_SCRAM_PASSWORD=${SERVICES_KAFKA_SCRAM_PASSWORD:-votes-test-scram-password}
KAFKA_LIB=$RUN/kafka/lib
KAFKA_POM=$SCRIPTS/kafka/pom.xml
# The brokers' JVM, both overridable: G1 with a 20 ms pause goal (ZGC measured worse on two
# vCPUs, its concurrent threads taking the CPUs the rest needs: perf/RESULTS.md, 2026-12-03).
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
KAFKA_GC_OPTS=${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35}
# One network thread per two CPUs and one I/O thread per CPU, at least two of each.
CPUS=$(nproc 2>/dev/null || echo 2)
KAFKA_NETWORK_THREADS=${KAFKA_NETWORK_THREADS:-$(( CPUS / 2 > 2 ? CPUS / 2 : 2 ))}
KAFKA_IO_THREADS=${KAFKA_IO_THREADS:-$(( CPUS > 2 ? CPUS : 2 ))}
DYNAMODB_PORT=8000
DYNAMODB_DIR=$RUN/dynamodb
# SERVICES_REDIS_PORT runs another Redis beside the shared one, with its own dir and pidfile:
# the outage test stops and restarts its own instance without touching other tests' data.
REDIS_PORT=${SERVICES_REDIS_PORT:-6379}
if [[ $REDIS_PORT == 6379 ]]; then REDIS_DIR=$RUN/redis; else REDIS_DIR=$RUN/redis-$REDIS_PORT; fi

# Set by option parsing.
KAFKA_NODES=1
KAFKA_NODES_GIVEN=0
SESSION_FILE=
WIPE=0

# ---------------------------------------------------------------------------------------------
# Small helpers

log() { printf '%s\n' "$*"; }
die() {
  printf 'services.sh: error: %s\n' "$*" >&2
  exit 1
}

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# True if something accepts TCP connections on $HOST:$1 (bash's /dev/tcp, no extra tool).
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# True if process $1 exists and is not a zombie (a daemon that died while this script is its
# parent stays a zombie until reaped, and kill -0 would still succeed on it).
running() {
  local state
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# Prints the pid in pidfile $1 if that process runs and its command line contains $2, so that
# a recycled pid of some unrelated process is never taken for ours (nor killed).
live_pid() {
  local file=$1 marker=$2 pid
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] && running "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
  echo "$pid"
}

# SIGTERM the given pids, wait up to STOP_TIMEOUT seconds for all of them, SIGKILL the rest.
# Signalled together so that Kafka nodes shut down while their quorum still exists.
stop_pids() {
  local what=$1 p alive deadline
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while :; do
    alive=()
    for p in "$@"; do running "$p" && alive+=("$p"); done
    ((${#alive[@]})) || return 0
    ((SECONDS < deadline)) || break
    sleep 0.2
  done
  log "$what: still running after ${STOP_TIMEOUT}s, sending SIGKILL to ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  for _ in {1..50}; do
    local left=0
    for p in "${alive[@]}"; do running "$p" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
}

# Stops a service's processes started from this checkout (the pids given); with none, says
# whether another checkout's copy holds its port (left alone: not ours to stop) or none runs.
stop_ours() {
  local what=$1 port=$2
  shift 2
  if (($#)); then
    stop_pids "$what" "$@"
    log "$what: stopped (pid(s) $*)"
  elif port_open "$port"; then
    log "$what: not started from this checkout (port $port is in use by another one); left alone"
  else
    log "$what: not running"
  fi
}

# Prints the last lines of each non-empty file given, for a health check that failed.
show_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf -- '----- last lines of %s\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# "pid N" for a daemon that this checkout started, else who it is not.
whose() { if [[ -n $1 ]]; then echo "$2 $1"; else echo "not started from this checkout"; fi; }

sha256() { sha256sum "$@" | cut -c1-64 | tr -d '\n'; }

# `up --session-file`: remember that this call started service $1.
record_started() { [[ -z $SESSION_FILE ]] || echo "$1" >>"$SESSION_FILE"; }

# Starts a command as a daemon that outlives this script: its own session (setsid), SIGHUP
# ignored (nohup), no terminal, output appended to $1, and without the lock fds 7-9 (a
# daemon holding them would keep every later up/down waiting). Prints its pid; with no job
# control, setsid execs in place, so $! is the daemon's own pid.
daemon() {
  local out=$1
  shift
  # A mark in the log, so that the tail shown after a failed start is not read as old output.
  printf -- '----- %s: started by scripts/services.sh\n' "$(date '+%F %T')" >>"$out"
  setsid nohup "$@" </dev/null >>"$out" 2>&1 7>&- 8>&- 9>&- &
  local pid=$! i
  # Until it execs, the child is a copy of this shell, whose command line names no service: a
  # liveness check by command line in that window would call a starting service dead (a busy
  # machine made it long enough once). Wait for the exec, bounded (30 s).
  for ((i = 0; i < 600; i++)); do
    running "$pid" || break
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" && break
    sleep 0.05
  done
  echo "$pid"
}

# ---------------------------------------------------------------------------------------------
# Prerequisites, checked before anything starts, each failing with one line naming what is
# missing.

JAVA=
find_java() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
  else
    JAVA=$(command -v java) || die "kafka needs Java 17 or newer: no java on PATH and JAVA_HOME unset (Debian: apt-get install -y openjdk-17-jre-headless)"
  fi
  local major
  major=$("$JAVA" -version 2>&1 | sed -nE '1s/^[^"]*"([0-9]+).*/\1/p')
  if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "kafka needs Java 17 or newer; $JAVA is version '${major:-unknown}' (set JAVA_HOME to a JDK 17+)"
  fi
}

kafka_lib_current() { [[ -f $KAFKA_LIB/.stamp && "$(<"$KAFKA_LIB/.stamp")" == "$(sha256 "$KAFKA_POM")" ]]; }

check_prereqs() {
  local svc
  command -v setsid >/dev/null || die "setsid is missing (util-linux)"
  command -v flock >/dev/null || die "flock is missing (util-linux)"
  for svc in "$@"; do
    case $svc in
    kafka)
      find_java
      kafka_lib_current || command -v mvn >/dev/null ||
        die "kafka needs Maven (mvn) to fetch its jars from Maven Central (Debian: apt-get install -y maven)"
      ;;
    dynamodb)
      command -v curl >/dev/null || die "dynamodb needs curl for its health check (apt-get install -y curl)"
      if [[ $DYNAMODB_ENGINE == dynoxide ]]; then
        dynoxide_current || command -v cargo >/dev/null ||
          die "dynamodb needs cargo (rustup) to install dynoxide $DYNOXIDE_VERSION once into $DYNOXIDE_ROOT"
        continue
      fi
      dynamodb_venv_current && continue
      command -v "${PYTHON:-python3}" >/dev/null || die "dynamodb needs Python 3.9+ (${PYTHON:-python3} not found; set PYTHON to a python3)"
      "${PYTHON:-python3}" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))' 2>/dev/null ||
        die "dynamodb needs Python 3.9+ with venv and ensurepip ($(command -v "${PYTHON:-python3}") lacks one; Debian: apt-get install -y python3-venv)"
      ;;
    redis)
      command -v redis-server >/dev/null && command -v redis-cli >/dev/null && continue
      command -v apt-get >/dev/null || die "redis needs redis-server, which is missing, and apt-get is not there to install it"
      ((EUID == 0)) || die "redis needs redis-server, which is missing: run 'sudo apt-get install -y redis-server'"
      ;;
    esac
  done
}

# ---------------------------------------------------------------------------------------------
# Kafka

kafka_mode() { if (($1 == 1)); then echo single; else echo "cluster$1"; fi; }
kafka_node_dir() { echo "$RUN/kafka/$(kafka_mode "$1")/node-$2"; }
kafka_bootstrap() {
  local i out=
  for ((i = 0; i < $1; i++)); do out+="${out:+,}$HOST:$((KAFKA_PORT + i))"; done
  echo "$out"
}

# Jars from Maven Central into target/services/kafka/lib, skipped while the stamp (the pom's
# checksum) matches. Maven uses ~/.m2, so resolving again after a wipe of target/ is offline.
kafka_ensure_lib() {
  kafka_lib_current && return 0
  mkdir -p "$RUN/kafka"
  (
    # Two callers (up and kafka-topics) must not resolve into the same directory at once.
    flock -w 600 8 || die "kafka: timed out waiting for $RUN/kafka/.lib.lock"
    kafka_lib_current && exit 0
    log "kafka: resolving Kafka jars from Maven Central ($KAFKA_POM)"
    rm -rf "$KAFKA_LIB" "$KAFKA_LIB.tmp"
    if ! mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIB.tmp" >"$RUN/kafka/mvn.log" 2>&1; then
      show_tail "$RUN/kafka/mvn.log"
      die "kafka: Maven could not resolve the Kafka jars (full output in $RUN/kafka/mvn.log)"
    fi
    sha256 "$KAFKA_POM" >"$KAFKA_LIB.tmp/.stamp"
    mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
  ) 8>>"$RUN/kafka/.lib.lock"
}

# Runs a Kafka CLI class: small heap and C1 only, since these JVMs live for a second or two.
# `timeout` bounds it, so that a health check never hangs on a half-started node.
kafka_tool() {
  timeout 60 "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPTS/kafka/log4j2-tools.xml" -cp "$KAFKA_LIB/*" "$@"
}

# Client settings of the health check: give up fast on a node that is not there yet.
kafka_probe_config() {
  local f=$RUN/kafka/probe.properties
  printf '%s\n' request.timeout.ms=5000 default.api.timeout.ms=8000 \
    socket.connection.setup.timeout.max.ms=2000 >"$f"
  echo "$f"
}

# The health check: a metadata request to the cluster, then ApiVersions to every broker that the
# metadata lists (BrokerApiVersionsCommand). Prints how many brokers answered.
kafka_brokers_answering() {
  local out
  out=$(kafka_tool org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$1" --command-config "$(kafka_probe_config)" 2>/dev/null) || true
  grep -c ' -> (' <<<"$out" || true
}

# The secure listener's TLS material, made once: a CA and the broker's key and certificate (for
# 127.0.0.1 and localhost) in one PEM file, the form Kafka's PEM key store reads. In the cache
# shared by checkouts, like the broker itself may be: a test of any checkout finds the CA of
# the broker that answers.
kafka_tls_dir() { echo "$SERVICES_CACHE/kafka-tls"; }
kafka_ensure_tls() {
  local dir
  dir=$(kafka_tls_dir)
  [[ -s $dir/broker-keystore.pem && -s $dir/ca.pem ]] && return 0
  command -v openssl >/dev/null || die "kafka: openssl is needed for the secure listener's certificates (Debian: apt-get install -y openssl)"
  mkdir -p "$dir"
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj '/CN=votes services Kafka CA' -keyout "$dir/ca.key" -out "$dir/ca.pem" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
        -keyout "$dir/broker.key" -out "$dir/broker.csr" &&
      openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 3650 -out "$dir/broker.pem" \
        -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n') &&
      openssl pkcs8 -topk8 -nocrypt -in "$dir/broker.key" -out "$dir/broker.pk8" &&
      cat "$dir/broker.pk8" "$dir/broker.pem" >"$dir/broker-keystore.pem"
  ) >"$dir/openssl.log" 2>&1 || { show_tail "$dir/openssl.log"; die "kafka: making the secure listener's certificates failed"; }
  chmod 0644 "$dir/ca.pem"
}

# Creates (or resets) the SCRAM user of the secure listener, through the plaintext listener.
kafka_ensure_scram_user() {
  kafka_tool kafka.admin.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" --alter \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$KAFKA_SCRAM_PASSWORD]" \
    --entity-type users --entity-name "$KAFKA_SCRAM_USER" >"$RUN/kafka/scram.log" 2>&1 ||
    { show_tail "$RUN/kafka/scram.log"; die "kafka: creating the SCRAM user $KAFKA_SCRAM_USER failed"; }
}

# Node i's server.properties, written on every start so that the script stays its only source.
kafka_write_config() {
  local n=$1 i=$2 dir=$3 voters='' j rf isr
  for ((j = 0; j < n; j++)); do voters+="${voters:+,}$j@127.0.0.1:$((KAFKA_CONTROLLER_PORT + j))"; done
  # One node: everything with one replica. Three nodes: three replicas, and writes need two
  # in sync, so the cluster keeps accepting transactions with one node down.
  if ((n == 1)); then rf=1 isr=1; else rf=3 isr=2; fi
  # Three nodes: the controllers fence a broker that missed its heartbeats for 3 s (Kafka's
  # default is 9 s), so a killed broker's partitions and transaction coordinators get new
  # leaders in ~3-4 s instead of ~11 s (docs/reliability.md). One node has no one to fail to.
  local failover=''
  if ((n > 1)); then
    failover=$'broker.heartbeat.interval.ms=500\nbroker.session.timeout.ms=3000'
  fi
  # One node also listens with TLS and SCRAM (tests/kafka_secure.rs); the fault cluster does not.
  local secure_listener='' secure_advertised='' secure_map='' secure=''
  if ((n == 1)); then
    secure_listener=",SECURE://127.0.0.1:$KAFKA_SECURE_PORT"
    secure_advertised=",SECURE://127.0.0.1:$KAFKA_SECURE_PORT"
    secure_map=",SECURE:SASL_SSL"
    secure="sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.secure.ssl.keystore.type=PEM
listener.name.secure.ssl.keystore.location=$(kafka_tls_dir)/broker-keystore.pem"
  fi
  cat >"$dir/server.properties" <<EOF
# Written by scripts/services.sh at each start; edit the script, not this file.
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://$HOST:$((KAFKA_PORT + i)),CONTROLLER://127.0.0.1:$((KAFKA_CONTROLLER_PORT + i))$secure_listener
advertised.listeners=PLAINTEXT://$HOST:$((KAFKA_PORT + i))$secure_advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$secure_map
$secure
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data

num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr

# Test speed: small internal topics; a short wait for more members before a new group's first
# rebalance (the cores of one votes serve join within milliseconds: one rebalance, not one per core).
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=300
# Topics are created by 'votes init' (or tests), never by a typo in a producer.
auto.create.topics.enable=false
# A votes serve may ask for a group session down to 1 s (the default floor is 6 s): shorter
# sessions move a dead node's partitions sooner (--group-session-timeout-ms).
group.min.session.timeout.ms=1000
$failover

# Threads sized for the machine (docs/capacity.md): the defaults (3 network, 8 I/O) are for
# many-core brokers; on a few cores their hand-offs cost more than they parallelise.
num.network.threads=$KAFKA_NETWORK_THREADS
num.io.threads=$KAFKA_IO_THREADS
EOF
}

kafka_start_node() {
  local n=$1 i=$2 dir cid
  dir=$(kafka_node_dir "$n" "$i")
  mkdir -p "$dir/logs"
  ((n == 1)) && kafka_ensure_tls
  kafka_write_config "$n" "$i" "$dir"
  cid=$(<"$RUN/kafka/$(kafka_mode "$n")/cluster.id")
  # Storage is formatted once, on the first start of the node; later starts keep the data.
  if [[ ! -f $dir/data/meta.properties ]]; then
    kafka_tool kafka.tools.StorageTool format --cluster-id "$cid" --config "$dir/server.properties" \
      --ignore-formatted >>"$dir/logs/format.log" 2>&1 ||
      { show_tail "$dir/logs/format.log"; die "kafka: formatting node $i's storage failed"; }
  fi
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS and KAFKA_GC_OPTS hold several options
  daemon "$dir/logs/kafka.out" "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_GC_OPTS \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    "-Xlog:gc*:file=$dir/logs/gc.log:time,tags:filecount=3,filesize=20M" \
    -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$SCRIPTS/kafka/log4j2.xml" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties" >"$dir/kafka.pid"
}

kafka_node_pid() { live_pid "$(kafka_node_dir "$1" "$2")/kafka.pid" "$(kafka_node_dir "$1" "$2")/server.properties"; }

# Prints the pids of this checkout's running nodes of the n-node cluster.
kafka_our_pids() {
  local i
  for ((i = 0; i < $1; i++)); do kafka_node_pid "$1" "$i" || true; done
}

up_kafka() {
  local n=$KAFKA_NODES other i pid count started=() foreign=() t0=$SECONDS
  if ((n == 1)); then other=3; else other=1; fi
  kafka_ensure_lib

  # The other mode started from here still runs: it holds port 9092.
  pid=$(kafka_our_pids "$other" | xargs)
  [[ -z $pid ]] || die "kafka: a ${other}-node Kafka started from this checkout runs (pids $pid); the 1-node and 3-node modes share port $KAFKA_PORT: run 'scripts/services.sh down kafka' first"

  # A port of this mode in use, but not by our node: either the same kind of cluster started
  # elsewhere (then there is nothing to do) or something else (then fail, saying what answers).
  for ((i = 0; i < n; i++)); do
    kafka_node_pid "$n" "$i" >/dev/null && continue
    if port_open $((KAFKA_PORT + i)) || port_open $((KAFKA_CONTROLLER_PORT + i)); then foreign+=("$i"); fi
  done
  if ((${#foreign[@]})); then
    count=$(kafka_brokers_answering "$(kafka_bootstrap 3)")
    if ((count == n)) && [[ -z $(kafka_our_pids "$n") ]]; then
      log "kafka: already up ($n node(s) on $HOST:$KAFKA_PORT, not started from this checkout)"
      return 0
    fi
    if ((count == 0)); then
      die "kafka: ports of node(s) ${foreign[*]} (first: $((KAFKA_PORT + foreign[0])) or $((KAFKA_CONTROLLER_PORT + foreign[0]))) are taken by something that is not a Kafka answering on $HOST:$KAFKA_PORT"
    fi
    die "kafka: a ${n}-node cluster is wanted, but a Kafka of $count broker(s) not started from this checkout answers on $HOST:$KAFKA_PORT (the 1-node and 3-node modes are exclusive): run 'scripts/services.sh down kafka' in the checkout that started it"
  fi

  # Start the nodes that do not run: all on the first call, a killed one after a fault test.
  local mode_dir
  mode_dir=$RUN/kafka/$(kafka_mode "$n")
  mkdir -p "$mode_dir"
  if [[ ! -s $mode_dir/cluster.id ]]; then
    { kafka_tool kafka.tools.StorageTool random-uuid 2>/dev/null || true; } | tail -n 1 >"$mode_dir/cluster.id.tmp"
    grep -qE '^[A-Za-z0-9_-]{22}$' "$mode_dir/cluster.id.tmp" || die "kafka: StorageTool random-uuid gave no cluster id"
    mv "$mode_dir/cluster.id.tmp" "$mode_dir/cluster.id"
  fi
  for ((i = 0; i < n; i++)); do
    kafka_node_pid "$n" "$i" >/dev/null && continue
    kafka_start_node "$n" "$i"
    started+=("$i")
  done
  ((${#started[@]})) && log "kafka: starting node(s) ${started[*]} of the ${n}-node cluster"

  # Healthy when every node is listed by the metadata and answers.
  local deadline=$((SECONDS + HEALTH_TIMEOUT)) bootstrap dead=''
  bootstrap=$(kafka_bootstrap "$n")
  while :; do
    count=0
    port_open "$KAFKA_PORT" && count=$(kafka_brokers_answering "$bootstrap")
    ((count == n)) && break
    for i in "${started[@]}"; do kafka_node_pid "$n" "$i" >/dev/null || dead+=" $i"; done
    if [[ -n $dead ]] || ((SECONDS >= deadline)); then
      for i in "${started[@]}"; do
        show_tail "$(kafka_node_dir "$n" "$i")/logs/server.log" "$(kafka_node_dir "$n" "$i")/logs/kafka.out"
      done
      # Stop what this call started; nodes that ran before are left as they were.
      pid=''
      for i in "${started[@]}"; do pid+=" $(kafka_node_pid "$n" "$i" || true)"; done
      # shellcheck disable=SC2086
      stop_pids kafka $pid
      [[ -n $dead ]] && die "kafka: node(s)$dead exited during startup (logs above)"
      die "kafka: $count of $n broker(s) answered within ${HEALTH_TIMEOUT}s (logs above)"
    fi
    sleep 1
  done

  pid=$(kafka_our_pids "$n" | xargs)
  if ((${#started[@]})); then
    if ((n == 1)); then
      kafka_ensure_scram_user
      log "kafka: SASL_SSL on 127.0.0.1:$KAFKA_SECURE_PORT (SCRAM-SHA-512 user $KAFKA_SCRAM_USER, CA $(kafka_tls_dir)/ca.pem)"
    fi
    record_started kafka
    log "kafka: up on $bootstrap ($n node(s), pid(s) $pid) in $((SECONDS - t0))s"
  else
    log "kafka: already up on $bootstrap ($n node(s), pid(s) $pid)"
  fi
}

down_kafka() {
  local n pids=() dirs=()
  for n in 1 3; do
    # shellcheck disable=SC2207
    pids+=($(kafka_our_pids "$n"))
  done
  stop_ours kafka "$KAFKA_PORT" "${pids[@]}"
  rm -f "$RUN"/kafka/*/node-*/kafka.pid
  if ((WIPE)); then
    dirs=("$RUN"/kafka/single "$RUN"/kafka/cluster3)
    rm -rf "${dirs[@]}"
    log "kafka: data wiped (${dirs[*]})"
  fi
}

status_kafka() {
  local n=0 count expected pids where
  # Which cluster is ours decides how many nodes must answer; else --brokers, else any.
  if [[ -n $(kafka_our_pids 3) ]]; then n=3; elif [[ -n $(kafka_our_pids 1) ]]; then n=1; fi
  ((KAFKA_NODES_GIVEN)) && n=$KAFKA_NODES
  expected=$n
  count=0
  if port_open "$KAFKA_PORT" || port_open $((KAFKA_PORT + 1)) || port_open $((KAFKA_PORT + 2)); then
    find_java
    kafka_lib_current || { log "kafka     ?     (jars not resolved yet: run 'scripts/services.sh up kafka')"; return 1; }
    count=$(kafka_brokers_answering "$(kafka_bootstrap 3)")
  fi
  ((expected)) || expected=$((count ? count : 1))
  pids=
  ((n == 0)) || pids=$(kafka_our_pids "$n" | xargs)
  where=$(kafka_bootstrap "$expected")
  if ((count == expected)); then
    printf '%-9s %-5s %s (%s node(s), %s)\n' kafka up "$where" "$count" "$(whose "$pids" "pid(s)")"
  else
    printf '%-9s %-5s %s (%s of %s broker(s) answer%s)\n' kafka down "$where" "$count" "$expected" "${pids:+; our pid(s) $pids}"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# DynamoDB API: dynoxide (default) or moto (VOTES_DYNAMODB_ENGINE=moto, for side-by-side runs)

SERVICES_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/votes-services
DYNAMODB_ENGINE=${VOTES_DYNAMODB_ENGINE:-dynoxide}
case $DYNAMODB_ENGINE in
  dynoxide | moto) ;;
  *) die "VOTES_DYNAMODB_ENGINE must be dynoxide or moto, not '$DYNAMODB_ENGINE'" ;;
esac

# dynoxide: a Rust binary, pinned, built once by `cargo install --locked` into the user's cache
# (like the Kafka jars in ~/.m2), so a fresh clone does not build it again. Its SQLite is
# compiled in (rusqlite's bundled feature): no system library needed.
DYNOXIDE_VERSION=3.2.0
DYNOXIDE_ROOT=$SERVICES_CACHE/dynoxide-$DYNOXIDE_VERSION
DYNOXIDE_BIN=$DYNOXIDE_ROOT/bin/dynoxide
# Tables live in memory (as in moto), unless VOTES_DYNAMODB_DB names a file: then they survive
# a restart of the engine (the fault campaign stops it). Put such a file on tmpfs: with its
# WAL and full sync, dynoxide on a real disk is far slower.
DYNAMODB_DB=${VOTES_DYNAMODB_DB:-}

dynoxide_current() { [[ -f $DYNOXIDE_ROOT/.complete && -x $DYNOXIDE_BIN ]]; }

dynoxide_ensure_installed() {
  dynoxide_current && return 0
  command -v cargo >/dev/null || die "dynamodb: cargo is needed to install dynoxide (rustup)"
  mkdir -p "$SERVICES_CACHE" "$DYNAMODB_DIR"
  (
    # Checkouts share the install: one builds it while the others wait.
    flock -w 1200 7 || die "dynamodb: timed out waiting for $DYNOXIDE_ROOT.lock"
    dynoxide_current && exit 0
    log "dynamodb: building dynoxide $DYNOXIDE_VERSION into $DYNOXIDE_ROOT (crates.io; a few minutes, once)"
    local t0=$SECONDS build=$SERVICES_CACHE/dynoxide-build
    rm -rf "$DYNOXIDE_ROOT"
    # Its own target directory (not the project's CARGO_TARGET_DIR), removed afterwards.
    if ! CARGO_TARGET_DIR=$build cargo install dynoxide-rs --version "=$DYNOXIDE_VERSION" --locked \
      --no-default-features --features native-sqlite,http-server,cli \
      --root "$DYNOXIDE_ROOT" >"$DYNAMODB_DIR/install.log" 2>&1; then
      show_tail "$DYNAMODB_DIR/install.log"
      rm -rf "$build"
      die "dynamodb: installing dynoxide failed (full output in $DYNAMODB_DIR/install.log)"
    fi
    rm -rf "$build"
    touch "$DYNOXIDE_ROOT/.complete"
    log "dynamodb: dynoxide built in $((SECONDS - t0))s"
  ) 7>>"$DYNOXIDE_ROOT.lock"
}

# moto: Python, pinned in requirements.txt, in a venv named by the file's checksum so a fresh
# clone reuses it and a change of requirements gets a venv of its own.
DYNAMODB_REQ=$SCRIPTS/dynamodb/requirements.txt
DYNAMODB_VENV=$SERVICES_CACHE/moto-venv-$(sha256 "$DYNAMODB_REQ" | cut -c1-16)

dynamodb_venv_current() { [[ -f $DYNAMODB_VENV/.complete ]]; }

dynamodb_ensure_venv() {
  dynamodb_venv_current && return 0
  mkdir -p "$SERVICES_CACHE" "$DYNAMODB_DIR"
  (
    flock -w 600 7 || die "dynamodb: timed out waiting for $DYNAMODB_VENV.lock"
    dynamodb_venv_current && exit 0
    log "dynamodb: installing moto into $DYNAMODB_VENV (PyPI)"
    rm -rf "$DYNAMODB_VENV"
    if ! { "${PYTHON:-python3}" -m venv "$DYNAMODB_VENV" &&
      "$DYNAMODB_VENV/bin/pip" install -q --disable-pip-version-check --no-input -r "$DYNAMODB_REQ"; } \
      >"$DYNAMODB_DIR/pip.log" 2>&1; then
      show_tail "$DYNAMODB_DIR/pip.log"
      die "dynamodb: installing moto failed (full output in $DYNAMODB_DIR/pip.log)"
    fi
    touch "$DYNAMODB_VENV/.complete"
  ) 7>>"$DYNAMODB_VENV.lock"
}

# The health check: a real ListTables call, signed with a dummy SigV4 header (moto routes by the
# service named in the credential scope; dynoxide wants a date; neither checks the signature).
dynamodb_healthy() {
  local out
  out=$(curl -sS --max-time 3 -X POST "http://$HOST:$DYNAMODB_PORT/" \
    -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Target: DynamoDB_20120810.ListTables' -H 'X-Amz-Date: 20250101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0' \
    -d '{}' -w '\n%{http_code}' 2>/dev/null) || return 1
  [[ ${out##*$'\n'} == 200 && $out == *'"TableNames"'* ]]
}

# The pid of the engine this checkout started, whichever it is.
dynamodb_pid() {
  live_pid "$DYNAMODB_DIR/dynamodb.pid" "$DYNOXIDE_BIN" ||
    live_pid "$DYNAMODB_DIR/dynamodb.pid" "$SCRIPTS/dynamodb/server.py"
}

# Which engine answers on the port: dynoxide names itself in its errors' type prefix.
dynamodb_engine_running() {
  local pid
  if pid=$(dynamodb_pid); then
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DYNOXIDE_BIN"; then echo dynoxide; else echo moto; fi
  else
    echo "unknown engine"
  fi
}

up_dynamodb() {
  local pid t0=$SECONDS deadline running
  if dynamodb_healthy; then
    pid=$(dynamodb_pid) || pid=
    running=$(dynamodb_engine_running)
    log "dynamodb: already up on $HOST:$DYNAMODB_PORT ($running, $(whose "$pid" pid))"
    if [[ -n $pid && $running != "$DYNAMODB_ENGINE" ]]; then
      log "dynamodb: $running runs, $DYNAMODB_ENGINE was asked for: run 'scripts/services.sh down dynamodb' first to switch"
    fi
    return 0
  fi
  port_open "$DYNAMODB_PORT" && die "dynamodb: port $DYNAMODB_PORT is in use by something that does not answer DynamoDB ListTables"
  mkdir -p "$DYNAMODB_DIR"
  if [[ $DYNAMODB_ENGINE == dynoxide ]]; then
    dynoxide_ensure_installed
    local db=()
    [[ -n $DYNAMODB_DB ]] && db=(--db-path "$DYNAMODB_DB")
    daemon "$DYNAMODB_DIR/dynamodb.log" "$DYNOXIDE_BIN" --host "$HOST" --port "$DYNAMODB_PORT" \
      "${db[@]}" >"$DYNAMODB_DIR/dynamodb.pid"
  else
    dynamodb_ensure_venv
    PYTHONUNBUFFERED=1 daemon "$DYNAMODB_DIR/dynamodb.log" "$DYNAMODB_VENV/bin/python" \
      "$SCRIPTS/dynamodb/server.py" -H "$HOST" -p "$DYNAMODB_PORT" >"$DYNAMODB_DIR/dynamodb.pid"
  fi
  # The pid daemon saw exec the engine: while it runs, the engine may still be starting. (The
  # pidfile and command line are not read again here: a campaign on a loaded machine once saw
  # that check fail for an engine that then answered.)
  pid=$(<"$DYNAMODB_DIR/dynamodb.pid")
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  until dynamodb_healthy; do
    if ! running "$pid" || ((SECONDS >= deadline)); then
      show_tail "$DYNAMODB_DIR/dynamodb.log"
      if running "$pid"; then
        log "dynamodb: pid $pid still runs: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        stop_pids dynamodb "$pid"
      else
        log "dynamodb: pid $pid is gone"
      fi
      die "dynamodb: no answer to ListTables on $HOST:$DYNAMODB_PORT (log above)"
    fi
    sleep 0.1
  done
  record_started dynamodb
  log "dynamodb: $DYNAMODB_ENGINE up on $HOST:$DYNAMODB_PORT (pid $(dynamodb_pid)) in $((SECONDS - t0))s"
}

down_dynamodb() {
  # shellcheck disable=SC2046
  stop_ours dynamodb "$DYNAMODB_PORT" $(dynamodb_pid)
  rm -f "$DYNAMODB_DIR/dynamodb.pid"
}

status_dynamodb() {
  local pid
  pid=$(dynamodb_pid) || pid=
  if dynamodb_healthy; then
    printf '%-9s %-5s %s (%s, %s)\n' dynamodb up "$HOST:$DYNAMODB_PORT" "$(dynamodb_engine_running)" "$(whose "$pid" pid)"
  else
    printf '%-9s %-5s %s%s\n' dynamodb down "$HOST:$DYNAMODB_PORT" "${pid:+ (pid $pid runs but does not answer)}"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Redis

# SERVICES_REDIS_TLS_DIR (cert.pem, key.pem: the server's certificate, also the clients' CA)
# serves TLS only, and SERVICES_REDIS_PASSWORD requires a password: a Redis configured as
# production runs it, for tests/redis_tls.rs (with SERVICES_REDIS_PORT, beside the shared one).
REDIS_TLS_DIR=${SERVICES_REDIS_TLS_DIR:-}
REDIS_PASSWORD=${SERVICES_REDIS_PASSWORD:-}
redis_cli() {
  local args=(-h "$HOST" -p "$REDIS_PORT")
  [[ -n $REDIS_TLS_DIR ]] && args+=(--tls --cacert "$REDIS_TLS_DIR/cert.pem")
  [[ -n $REDIS_PASSWORD ]] && args+=(--no-auth-warning -a "$REDIS_PASSWORD")
  redis-cli "${args[@]}" "$@"
}
redis_healthy() { command -v redis-cli >/dev/null && [[ $(redis_cli PING 2>/dev/null) == PONG ]]; }
redis_pid() { live_pid "$REDIS_DIR/redis.pid" redis-server; }

redis_ensure_installed() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "redis: installing Debian's redis-server"
  mkdir -p "$REDIS_DIR"
  # Debian's postinst would start Redis through invoke-rc.d on 6379 as a system service; a
  # policy-rc.d that answers 101 forbids that, so the only Redis there is the one started below.
  # (Docker-made machines already have one; otherwise one is put there for the install only.)
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
  fi
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 install --no-install-recommends redis-server)
  # The package lists of a fresh machine may be missing or stale: update, then try once more.
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$REDIS_DIR/apt.log" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get -q update >>"$REDIS_DIR/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$REDIS_DIR/apt.log" 2>&1; } || rc=$?
  ((added)) && rm -f "$policy"
  if ((rc)) || ! command -v redis-server >/dev/null; then
    show_tail "$REDIS_DIR/apt.log"
    die "redis: 'apt-get install redis-server' failed (full output in $REDIS_DIR/apt.log)"
  fi
}

up_redis() {
  local pid t0=$SECONDS deadline
  if redis_healthy; then
    pid=$(redis_pid) || pid=
    log "redis: already up on $HOST:$REDIS_PORT ($(whose "$pid" pid))"
    return 0
  fi
  port_open "$REDIS_PORT" && die "redis: port $REDIS_PORT is in use by something that does not answer PING"
  redis_ensure_installed
  mkdir -p "$REDIS_DIR/data"
  rm -f "$REDIS_DIR/redis.pid"
  # A cache of tallies that the system rebuilds from Kafka: no RDB snapshots, no AOF.
  # Protected mode refuses every client not on loopback while there is no password: off when
  # SERVICES_HOST binds another address (make chaos: its bridge's, which only this machine's
  # network namespaces reach).
  local redis_protected=yes
  [[ $HOST == 127.0.0.1 ]] || redis_protected=no
  local listen="port $REDIS_PORT" auth=""
  if [[ -n $REDIS_TLS_DIR ]]; then
    [[ -r $REDIS_TLS_DIR/cert.pem && -r $REDIS_TLS_DIR/key.pem ]] ||
      die "redis: SERVICES_REDIS_TLS_DIR=$REDIS_TLS_DIR lacks cert.pem or key.pem"
    listen="port 0
tls-port $REDIS_PORT
tls-cert-file $REDIS_TLS_DIR/cert.pem
tls-key-file $REDIS_TLS_DIR/key.pem
tls-auth-clients no"
  fi
  [[ -n $REDIS_PASSWORD ]] && auth="requirepass $REDIS_PASSWORD"
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by scripts/services.sh at each start; edit the script, not this file.
bind $HOST
$listen
$auth
protected-mode $redis_protected
daemonize yes
pidfile "$REDIS_DIR/redis.pid"
logfile "$REDIS_DIR/redis.log"
dir "$REDIS_DIR/data"
save ""
appendonly no
EOF
  # redis-server daemonizes itself (fork + setsid) and writes its own pidfile.
  printf -- '----- %s: started by scripts/services.sh\n' "$(date '+%F %T')" >>"$REDIS_DIR/redis.log"
  redis-server "$REDIS_DIR/redis.conf" </dev/null >>"$REDIS_DIR/redis.log" 2>&1 7>&- 8>&- 9>&- ||
    { show_tail "$REDIS_DIR/redis.log"; die "redis: redis-server did not start (log above)"; }
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  until redis_healthy && pid=$(redis_pid); do
    if ((SECONDS >= deadline)); then
      show_tail "$REDIS_DIR/redis.log"
      pid=$(redis_pid) && stop_pids redis "$pid"
      die "redis: no PONG on $HOST:$REDIS_PORT within ${HEALTH_TIMEOUT}s (log above)"
    fi
    sleep 0.2
  done
  record_started redis
  log "redis: up on $HOST:$REDIS_PORT (pid $pid) in $((SECONDS - t0))s"
}

down_redis() {
  # shellcheck disable=SC2046
  stop_ours redis "$REDIS_PORT" $(redis_pid)
  rm -f "$REDIS_DIR/redis.pid"
  if ((WIPE)); then rm -rf "$REDIS_DIR/data"; fi
}

status_redis() {
  local pid
  pid=$(redis_pid) || pid=
  if redis_healthy; then
    printf '%-9s %-5s %s (%s)\n' redis up "$HOST:$REDIS_PORT" "$(whose "$pid" pid)"
  else
    printf '%-9s %-5s %s%s\n' redis down "$HOST:$REDIS_PORT" "${pid:+ (pid $pid runs but does not answer)}"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Commands

# Runs "$1_<service>" for each service at once (the JVM and pip steps are slow, and
# independent); each prints its own result or error. Fails naming the services that failed.
run_parallel() {
  local action=$1 svc failed=()
  shift
  local -A job=()
  for svc in "$@"; do
    "${action}_$svc" &
    job[$svc]=$!
  done
  for svc in "$@"; do wait "${job[$svc]}" || failed+=("$svc"); done
  ((${#failed[@]} == 0)) || die "$action failed for: ${failed[*]}"
}

# One up or down at a time per checkout: they share pidfiles, data dirs and the session file.
take_lock() {
  mkdir -p "$RUN"
  exec 9>>"$RUN/.lock"
  flock -w 900 9 || die "another 'scripts/services.sh up/down' of this checkout holds $RUN/.lock"
}

cmd_up() {
  local t0=$SECONDS
  check_prereqs "$@"
  take_lock
  [[ -z $SESSION_FILE ]] || touch "$SESSION_FILE"
  run_parallel up "$@"
  log "services up: $* ($((SECONDS - t0))s)"
}

cmd_down() {
  local svc wanted=("$@") todo=()
  take_lock
  if [[ -n $SESSION_FILE ]]; then
    if [[ ! -f $SESSION_FILE ]]; then
      log "nothing recorded in $SESSION_FILE: nothing to stop"
      return 0
    fi
    for svc in "${wanted[@]}"; do grep -qxF "$svc" "$SESSION_FILE" && todo+=("$svc"); done
  else
    todo=("${wanted[@]}")
  fi
  if ((${#todo[@]})); then run_parallel down "${todo[@]}"; else log "nothing to stop"; fi
  if [[ -n $SESSION_FILE ]]; then
    # Forget what was stopped; the file goes once nothing is left in it.
    for svc in "${todo[@]}"; do
      grep -vxF "$svc" "$SESSION_FILE" >"$SESSION_FILE.tmp" || true
      mv "$SESSION_FILE.tmp" "$SESSION_FILE"
    done
    grep -q . "$SESSION_FILE" || rm -f "$SESSION_FILE"
  fi
}

cmd_status() {
  local svc rc=0
  for svc in "$@"; do "status_$svc" || rc=1; done
  return "$rc"
}

cmd_kafka_run() {
  find_java
  kafka_lib_current || command -v mvn >/dev/null || die "kafka needs Maven (mvn) to fetch its jars"
  kafka_ensure_lib >&2
  exec "$JAVA" -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPTS/kafka/log4j2-tools.xml" -cp "$KAFKA_LIB/*" "$@"
}

main() {
  local cmd=${1:-help} services=() arg
  (($#)) && shift
  case $cmd in
  up | down | status) ;;
  kafka-topics)
    # --bootstrap-server unless the caller gave one (e.g. to name a node of the 3-node cluster).
    if [[ " $* " == *" --bootstrap-server "* || " $* " == *" --bootstrap-server="* ]]; then
      cmd_kafka_run org.apache.kafka.tools.TopicCommand "$@"
    else
      cmd_kafka_run org.apache.kafka.tools.TopicCommand --bootstrap-server "${KAFKA_BOOTSTRAP:-$HOST:$KAFKA_PORT}" "$@"
    fi
    ;;
  kafka-run)
    (($#)) || die "usage: scripts/services.sh kafka-run CLASS ARGS..."
    cmd_kafka_run "$@"
    ;;
  help | -h | --help)
    usage
    return 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
  esac

  while (($#)); do
    arg=$1
    shift
    case $arg in
    --brokers | --brokers=*)
      [[ $cmd != down ]] || die "down takes no --brokers: it stops whichever Kafka this checkout started"
      if [[ $arg == *=* ]]; then KAFKA_NODES=${arg#*=}; else KAFKA_NODES=${1:-}; shift || true; fi
      [[ $KAFKA_NODES == 1 || $KAFKA_NODES == 3 ]] || die "--brokers takes 1 or 3"
      KAFKA_NODES_GIVEN=1
      ;;
    --session-file | --session-file=*)
      [[ $cmd != status ]] || die "status takes no --session-file"
      if [[ $arg == *=* ]]; then SESSION_FILE=${arg#*=}; else SESSION_FILE=${1:-}; shift || true; fi
      [[ -n $SESSION_FILE ]] || die "--session-file needs a file name"
      ;;
    --wipe)
      [[ $cmd == down ]] || die "only down takes --wipe"
      WIPE=1
      ;;
    kafka | dynamodb | redis)
      [[ " ${services[*]} " == *" $arg "* ]] || services+=("$arg")
      ;;
    all) services=("${ALL_SERVICES[@]}") ;;
    *) die "unknown argument '$arg' (services: ${ALL_SERVICES[*]}; see 'scripts/services.sh help')" ;;
    esac
  done
  ((${#services[@]})) || services=("${ALL_SERVICES[@]}")
  "cmd_$cmd" "${services[@]}"
}

main "$@"
