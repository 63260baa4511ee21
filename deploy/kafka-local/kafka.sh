#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback,
# built from Maven Central jars (see pom.xml) -- no container, no download outside Maven.
#
#   kafka.sh start    collect jars if needed, format storage once, start, wait until ready;
#                     prints the bootstrap address (e.g. 127.0.0.1:19092) as the last stdout line
#   kafka.sh stop     SIGTERM, wait, SIGKILL after KAFKA_LOCAL_STOP_TIMEOUT seconds
#   kafka.sh status   prints "running <address>" (exit 0) or "not running" (exit 1)
#
# Environment:
#   KAFKA_LOCAL_DIR              run dir: config, data, logs, PID file   (default: <this dir>/run)
#   KAFKA_LOCAL_PORT             client (PLAINTEXT) port                 (default: 19092)
#   KAFKA_LOCAL_CONTROLLER_PORT  KRaft controller port                   (default: 19093)
#   KAFKA_LOCAL_TIMEOUT          seconds to wait for readiness           (default: 120)
#   KAFKA_LOCAL_STOP_TIMEOUT     seconds to wait after SIGTERM            (default: 30)
#   KAFKA_LOCAL_HEAP             JVM max heap                            (default: 768m)
#   KAFKA_LOCAL_OWNER_PID        if set, the broker is stopped when that process ends
#                                (the test fixture passes its own PID: no orphan broker after a
#                                killed test run)
#   JAVA_HOME                    Java 17+ to use                         (default: java on PATH)
#
# Progress and errors go to stderr; stdout carries only the bootstrap address.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
LIBS="$HERE/libs"
STAMP="$LIBS/.pom.sha256"

RUN_DIR="${KAFKA_LOCAL_DIR:-$HERE/run}"
PORT="${KAFKA_LOCAL_PORT:-19092}"
CONTROLLER_PORT="${KAFKA_LOCAL_CONTROLLER_PORT:-19093}"
TIMEOUT="${KAFKA_LOCAL_TIMEOUT:-120}"
STOP_TIMEOUT="${KAFKA_LOCAL_STOP_TIMEOUT:-30}"
HEAP="${KAFKA_LOCAL_HEAP:-768m}"
OWNER_PID="${KAFKA_LOCAL_OWNER_PID:-}"
HOST=127.0.0.1

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
else
    JAVA="java"
fi

log() { echo "kafka-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# helpers

# Makes RUN_DIR absolute (the PID check matches it against the broker's command line).
abs_run_dir() {
    if [[ "${1:-}" == create ]]; then
        mkdir -p "$RUN_DIR"
    fi
    if [[ -d "$RUN_DIR" ]]; then
        RUN_DIR="$(cd "$RUN_DIR" && pwd)"
    fi
    PID_FILE="$RUN_DIR/kafka.pid"
    ADDR_FILE="$RUN_DIR/bootstrap"
}

# PID of the broker of this run dir if it is alive, else nothing (and a stale PID file is removed).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$RUN_DIR/server.properties"; then
        echo "$pid"
    else
        rm -f "$PID_FILE"
    fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_port() {
    if ! [[ "$1" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then
        die "invalid port: $1"
    fi
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install a JDK/JRE 17+ or set JAVA_HOME)"
    local v
    v="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    if ! [[ "${v%%.*}" =~ ^[0-9]+$ ]] || ((${v%%.*} < 17)); then
        die "Kafka 4 needs Java 17+, found '$v' ($JAVA)"
    fi
}

# Collects the broker jars into libs/ once; re-collects only when pom.xml changes.
collect_jars() {
    local want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return 0
    fi
    mkdir -p "$HERE/target"
    exec 8>"$HERE/target/.collect.lock"
    flock 8
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        exec 8>&-
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
    local tmp="$HERE/target/libs-new"
    rm -rf "$tmp"
    log "collecting Kafka jars from Maven Central (first run only) ..."
    # -q still prints bare colour resets on Maven 3.8, so the output goes to a log, shown on error.
    if ! mvn -q -B -Dstyle.color=never -f "$POM" package "-Dkafka.libs.dir=$tmp" \
        >"$HERE/target/mvn.log" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$HERE/target/mvn.log" >&2
        die "mvn failed to collect the Kafka jars (log: $HERE/target/mvn.log)"
    fi
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    exec 8>&-
}

write_config() {
    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
    cat >"$RUN_DIR/server.properties" <<EOF
# Written by kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN_DIR/data

# One node: every internal topic has one replica, so transactions and groups work.
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small footprint (the cleaner's default dedupe buffer allocates 128 MiB at start).
log.cleaner.dedupe.buffer.size=16777216
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
    cat >"$RUN_DIR/log4j2.properties" <<EOF
# Broker logging (Log4j 2): one rolling file in logs/.
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $RUN_DIR/logs/server.log
appender.file.filePattern = $RUN_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
    cat >"$RUN_DIR/tools-log4j2.properties" <<EOF
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = STDERR
EOF
}

format_storage() {
    if [[ -f "$RUN_DIR/data/meta.properties" ]]; then
        return 0
    fi
    # What `StorageTool random-uuid` prints (a Kafka Uuid: 16 random bytes, base64url, no
    # padding, not starting with '-'), without paying for a JVM start.
    local cluster_id=""
    while [[ -z "$cluster_id" || "$cluster_id" == -* ]]; do
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
    done
    "$JAVA" -cp "$LIBS/*" "-Dlog4j2.configurationFile=$RUN_DIR/tools-log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN_DIR/server.properties" \
        >"$RUN_DIR/logs/format.log" 2>&1 || {
        cat "$RUN_DIR/logs/format.log" >&2
        die "storage format failed"
    }
}

show_log_tail() {
    log "--- last lines of $RUN_DIR/logs/kafka.out ---"
    tail -n 20 "$RUN_DIR/logs/kafka.out" >&2 2>/dev/null || true
    log "--- last lines of $RUN_DIR/logs/server.log ---"
    tail -n 40 "$RUN_DIR/logs/server.log" >&2 2>/dev/null || true
}

# A metadata round trip: BrokerApiVersionsCommand bootstraps an admin client (Metadata request),
# then asks every broker it learned of for its API versions.
metadata_answers() {
    timeout 30 "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
        "-Dlog4j2.configurationFile=$RUN_DIR/tools-log4j2.properties" \
        org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$1" \
        >"$RUN_DIR/logs/probe.log" 2>&1 && grep -q "(id: 1 " "$RUN_DIR/logs/probe.log"
}

# Stops the broker (SIGTERM, then SIGKILL) once $OWNER_PID is gone; ends by itself with the broker.
start_owner_watch() {
    local pid="$1" stop_timeout="$STOP_TIMEOUT"
    (
        while kill -0 "$OWNER_PID" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do
            sleep 2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < stop_timeout * 5; i++)); do
                kill -0 "$pid" 2>/dev/null || exit 0
                sleep 0.2
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    ) </dev/null >/dev/null 2>&1 8>&- 9>&- &
    disown $! 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_start() {
    check_port "$PORT"
    check_port "$CONTROLLER_PORT"
    abs_run_dir create
    exec 9>"$RUN_DIR/.lock"
    flock 9

    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        log "already running (pid $pid, run dir $RUN_DIR)"
        cat "$ADDR_FILE"
        return 0
    fi
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
            die "port $HOST:$p is already in use by another process (set KAFKA_LOCAL_PORT / KAFKA_LOCAL_CONTROLLER_PORT)"
        fi
    done

    if [[ -n "$OWNER_PID" && ! "$OWNER_PID" =~ ^[0-9]+$ ]]; then
        die "KAFKA_LOCAL_OWNER_PID is not a PID: $OWNER_PID"
    fi
    check_java
    local t0=$SECONDS
    collect_jars
    write_config
    format_storage

    local addr="$HOST:$PORT"
    log "starting broker on $addr (run dir $RUN_DIR)"
    # JVM flags as in Kafka's kafka-run-class.sh / kafka-server-start.sh, with a smaller heap.
    # setsid: the broker gets its own session, so a Ctrl-C in the caller's terminal does not hit it.
    setsid "$JAVA" "-Xmx$HEAP" -Xms128m -server \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$RUN_DIR/log4j2.properties" \
        "-Dkafka.logs.dir=$RUN_DIR/logs" \
        -cp "$LIBS/*" kafka.Kafka "$RUN_DIR/server.properties" \
        </dev/null >"$RUN_DIR/logs/kafka.out" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$addr" >"$ADDR_FILE"
    if [[ -n "$OWNER_PID" ]]; then
        start_owner_watch "$pid"
    fi

    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            show_log_tail
            die "broker exited during start-up"
        fi
        if port_open "$PORT" && metadata_answers "$addr"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            kill -TERM "$pid" 2>/dev/null || true
            sleep 2
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            die "broker not ready after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "ready after $((SECONDS - t0))s (pid $pid)"
    echo "$addr"
}

cmd_stop() {
    abs_run_dir
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        log "not running (run dir $RUN_DIR)"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    abs_run_dir
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        echo "running $(cat "$ADDR_FILE" 2>/dev/null) (pid $pid, run dir $RUN_DIR)"
        return 0
    fi
    echo "not running (run dir $RUN_DIR)"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $(basename "$0") start|stop|status" >&2
    exit 2
    ;;
esac
