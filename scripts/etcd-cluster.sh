#!/bin/sh
# Start or stop a three-member etcd cluster on loopback for tests.
#   scripts/etcd-cluster.sh start DIR   -> writes DIR/endpoints (comma-separated client URLs)
#   scripts/etcd-cluster.sh stop DIR    -> stops the members by the pids in DIR/*.pid
# Ports are chosen by the kernel (bind to port 0) so parallel runs do not clash.
set -eu
cmd=${1:?usage: etcd-cluster.sh start|stop DIR}
dir=${2:?usage: etcd-cluster.sh start|stop DIR}
etcd=${ETCD:-/usr/bin/etcd}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
    mkdir -p "$dir"
    cluster=""
    for i in 1 2 3; do
        eval "peer$i=$(free_port)"
        eval "client$i=$(free_port)"
        eval "p=\$peer$i"
        cluster="${cluster:+$cluster,}m$i=http://127.0.0.1:$p"
    done
    endpoints=""
    for i in 1 2 3; do
        eval "p=\$peer$i; c=\$client$i"
        "$etcd" --name "m$i" --data-dir "$dir/m$i" \
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "atoll-test-$$" >"$dir/m$i.log" 2>&1 &
        echo $! >"$dir/m$i.pid"
        endpoints="${endpoints:+$endpoints,}127.0.0.1:$c"
    done
    echo "$endpoints" >"$dir/endpoints"
    # Ready when every member answers /health.
    for i in 1 2 3; do
        eval "c=\$client$i"
        n=0
        until python3 -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:$c/health', timeout=1).read() else 1)" 2>/dev/null; do
            n=$((n + 1))
            if [ "$n" -gt 100 ]; then echo "etcd member m$i did not become healthy; see $dir/m$i.log" >&2; exit 1; fi
            sleep 0.2
        done
    done
    echo "$endpoints"
    ;;
stop)
    for f in "$dir"/m*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        # A member that lost quorum can linger on SIGTERM: give it 3 s, then SIGKILL.
        n=0
        while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    ;;
*)
    echo "usage: etcd-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
