#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback,
# built from Maven Central jars (see pom.xml) -- no container, no download outside Maven.
#
#   kafka.sh start    collect jars if needed, format storage once, start, wait until ready;
#                     prints the bootstrap address (e.g. 127.0.0.1:19092) as the last stdout line
#   kafka.sh start --sasl
#                     the same plus a SASL_SSL listener (TLS + SCRAM-SHA-512) on its own port
#                     (same as KAFKA_LOCAL_SASL=1): a throw-away CA and broker certificate in
#                     <run dir>/tls, a SCRAM user; its address goes to <run dir>/sasl-bootstrap
#                     and stderr, the CA to <run dir>/tls/ca.pem (stdout is unchanged)
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
#   KAFKA_LOCAL_SASL             1: start with the SASL_SSL listener        (default: 0)
#   KAFKA_LOCAL_SASL_PORT        its port                                (default: 19094)
#   KAFKA_LOCAL_SASL_USER        SCRAM-SHA-512 user                      (default: lstm-stream)
#   KAFKA_LOCAL_SASL_PASSWORD    its password (throw-away, local only)   (default: lstm-stream-local)
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
SASL="${KAFKA_LOCAL_SASL:-0}"
SASL_PORT="${KAFKA_LOCAL_SASL_PORT:-19094}"
SASL_USER="${KAFKA_LOCAL_SASL_USER:-lstm-stream}"
SASL_PASSWORD="${KAFKA_LOCAL_SASL_PASSWORD:-lstm-stream-local}"
SCRAM=SCRAM-SHA-512
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
    SASL_ADDR_FILE="$RUN_DIR/sasl-bootstrap"
    TLS_DIR="$RUN_DIR/tls"
    # sha256 of the SCRAM user and password the storage holds (see ensure_scram_user)
    SCRAM_MARK="$RUN_DIR/scram-user.sha256"
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
    local listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
    local advertised="PLAINTEXT://$HOST:$PORT"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if sasl_on; then
        listeners+=",SASL_SSL://$HOST:$SASL_PORT"
        advertised+=",SASL_SSL://$HOST:$SASL_PORT"
        protocols+=",SASL_SSL:SASL_SSL"
    fi
    cat >"$RUN_DIR/server.properties" <<EOF
# Written by kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
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
    if sasl_on; then
        # Clients only: the broker and controller keep talking PLAINTEXT among themselves.
        # TLS with the broker's PEM key and certificate (no client certificates), then
        # SCRAM-SHA-512 against the credentials stored in the cluster metadata.
        cat >>"$RUN_DIR/server.properties" <<EOF

# SASL_SSL listener (kafka.sh start --sasl): TLS, then SCRAM-SHA-512.
listener.name.sasl_ssl.sasl.enabled.mechanisms=$SCRAM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker-keystore.pem
listener.name.sasl_ssl.ssl.client.auth=none
EOF
        # For Kafka's own command-line tools (--command-config); the password is the local,
        # throw-away one.
        (
            umask 077
            cat >"$RUN_DIR/client-sasl.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=$SCRAM
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SASL_USER" password="$SASL_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
        )
    fi
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
    # With --sasl the SCRAM user goes into the bootstrap metadata right here: free, while
    # adding it to a running broker costs a JVM start (ensure_scram_user).
    local scram=()
    rm -f "$SCRAM_MARK"
    if sasl_on; then
        scram=(--add-scram "$SCRAM=[name=$SASL_USER,password=$SASL_PASSWORD]")
    fi
    "$JAVA" -cp "$LIBS/*" "-Dlog4j2.configurationFile=$RUN_DIR/tools-log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN_DIR/server.properties" \
        "${scram[@]}" >"$RUN_DIR/logs/format.log" 2>&1 || {
        cat "$RUN_DIR/logs/format.log" >&2
        die "storage format failed"
    }
    if sasl_on; then
        scram_digest >"$SCRAM_MARK"
    fi
}

# ---------------------------------------------------------------------------------------------
# SASL_SSL (start --sasl)

sasl_on() { [[ "$SASL" == 1 ]]; }

check_sasl_settings() {
    [[ "$SASL" == 0 || "$SASL" == 1 ]] || die "KAFKA_LOCAL_SASL must be 0 or 1, got '$SASL'"
    sasl_on || return 0
    check_port "$SASL_PORT"
    command -v openssl >/dev/null 2>&1 || die "openssl not found (needed by --sasl)"
    # The values go into a --add-scram [name=...,password=...] list and a JAAS string.
    local v
    for v in "$SASL_USER" "$SASL_PASSWORD"; do
        if [[ -z "$v" || "$v" =~ [][,=\"\'[:space:]] ]]; then
            die "KAFKA_LOCAL_SASL_USER and KAFKA_LOCAL_SASL_PASSWORD must be non-empty, without spaces, quotes, ',', '=', '[' or ']'"
        fi
    done
}

scram_digest() { printf '%s\n%s\n' "$SASL_USER" "$SASL_PASSWORD" | sha256sum | cut -d' ' -f1; }

# A throw-away CA and a broker certificate for 127.0.0.1/localhost signed by it, once per run
# dir (clients keep trusting the same ca.pem across restarts). EC P-256: milliseconds with
# openssl. Kafka reads the key (PKCS#8, unencrypted) and certificate as a PEM keystore.
make_tls() {
    if [[ -s "$TLS_DIR/ca.pem" && -s "$TLS_DIR/broker-keystore.pem" ]]; then
        return 0
    fi
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR" "$RUN_DIR/logs"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    # In a subshell with umask 077: the keys are never readable by others, not even briefly.
    (
        umask 077
        openssl req -x509 "${ec[@]}" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
            -days 365 -subj "/CN=kafka-local throw-away CA $(date +%s)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -new "${ec[@]}" -keyout "$TLS_DIR/broker.key" -out "$TLS_DIR/broker.csr" \
                -subj "/CN=$HOST" &&
            printf '%s\n' "subjectAltName=IP:$HOST,DNS:localhost" \
                "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature,keyEncipherment" \
                "extendedKeyUsage=serverAuth" \
                "authorityKeyIdentifier=keyid" \
                "subjectKeyIdentifier=hash" >"$TLS_DIR/broker.ext" &&
            openssl x509 -req -in "$TLS_DIR/broker.csr" -CA "$TLS_DIR/ca.pem" \
                -CAkey "$TLS_DIR/ca.key" -CAcreateserial -days 365 \
                -extfile "$TLS_DIR/broker.ext" -out "$TLS_DIR/broker.pem" &&
            cat "$TLS_DIR/broker.key" "$TLS_DIR/broker.pem" >"$TLS_DIR/broker-keystore.pem"
    ) >"$RUN_DIR/logs/tls.log" 2>&1 || {
        cat "$RUN_DIR/logs/tls.log" >&2
        die "making the throw-away CA and broker certificate failed"
    }
    # The certificates are public (clients anywhere on this machine read ca.pem).
    chmod 755 "$TLS_DIR"
    chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/broker.pem"
}

# The SCRAM user of a storage formatted without --sasl (or with another user/password):
# created or updated through the PLAINTEXT listener with Kafka's ConfigCommand.
ensure_scram_user() {
    local want
    want="$(scram_digest)"
    if [[ -f "$SCRAM_MARK" && "$(cat "$SCRAM_MARK")" == "$want" ]]; then
        return 0
    fi
    log "adding SCRAM user '$SASL_USER' to the existing storage"
    timeout 60 "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
        "-Dlog4j2.configurationFile=$RUN_DIR/tools-log4j2.properties" \
        org.apache.kafka.tools.ConfigCommand --bootstrap-server "$HOST:$PORT" --alter \
        --entity-type users --entity-name "$SASL_USER" \
        --add-config "$SCRAM=[password=$SASL_PASSWORD]" \
        >"$RUN_DIR/logs/scram.log" 2>&1 || {
        cat "$RUN_DIR/logs/scram.log" >&2
        return 1
    }
    echo "$want" >"$SCRAM_MARK"
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
    case "${1:-}" in
    "") ;;
    --sasl) SASL=1 ;;
    *) die "unknown start option: $1 (known: --sasl)" ;;
    esac
    check_port "$PORT"
    check_port "$CONTROLLER_PORT"
    check_sasl_settings
    abs_run_dir create
    exec 9>"$RUN_DIR/.lock"
    flock 9

    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        log "already running (pid $pid, run dir $RUN_DIR)"
        if sasl_on && [[ ! -f "$SASL_ADDR_FILE" ]]; then
            die "the running broker has no SASL_SSL listener: stop it and start again with --sasl"
        fi
        cat "$ADDR_FILE"
        return 0
    fi
    rm -f "$SASL_ADDR_FILE"
    local ports=("$PORT" "$CONTROLLER_PORT")
    if sasl_on; then
        ports+=("$SASL_PORT")
    fi
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            die "port $HOST:$p is already in use by another process (set KAFKA_LOCAL_PORT / KAFKA_LOCAL_CONTROLLER_PORT / KAFKA_LOCAL_SASL_PORT)"
        fi
    done

    if [[ -n "$OWNER_PID" && ! "$OWNER_PID" =~ ^[0-9]+$ ]]; then
        die "KAFKA_LOCAL_OWNER_PID is not a PID: $OWNER_PID"
    fi
    check_java
    local t0=$SECONDS
    collect_jars
    if sasl_on; then
        make_tls
    fi
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
        if port_open "$PORT" && metadata_answers "$addr" && { ! sasl_on || port_open "$SASL_PORT"; }; then
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
    if sasl_on; then
        if ! ensure_scram_user; then
            kill -TERM "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            die "could not add the SCRAM user (log: $RUN_DIR/logs/scram.log); broker stopped"
        fi
        echo "$HOST:$SASL_PORT" >"$SASL_ADDR_FILE"
        log "SASL_SSL listener on $HOST:$SASL_PORT ($SCRAM, user '$SASL_USER'), CA file $TLS_DIR/ca.pem"
        log "Kafka tools: --command-config $RUN_DIR/client-sasl.properties"
    fi
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
        local sasl=""
        if [[ -f "$SASL_ADDR_FILE" ]]; then
            sasl=", SASL_SSL $(cat "$SASL_ADDR_FILE"), CA $TLS_DIR/ca.pem"
        fi
        echo "running $(cat "$ADDR_FILE" 2>/dev/null) (pid $pid, run dir $RUN_DIR$sasl)"
        return 0
    fi
    echo "not running (run dir $RUN_DIR)"
    return 1
}

case "${1:-}" in
start) cmd_start "${@:2}" ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $(basename "$0") start [--sasl]|stop|status" >&2
    exit 2
    ;;
esac
