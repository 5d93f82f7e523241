# Shared by the testnet/ scripts; sourced, not run. See docs/testnet.md.
#
# Layout (fixed, one testnet per machine):
#   bridge tmbr0 in the root namespace, 198.18.0.1/24 (the root namespace reaches every UI)
#   namespace tm<i>, veth tmv<i> (bridge side) <-> eth0 (inside), 198.18.0.<10+i>/24
#   node i: UI/API on 198.18.0.<10+i>:8080, p2p on /ip4/198.18.0.<10+i>/tcp/4001, mDNS on
#   state:  $TESTNET_DIR (default <repo>/.testnet): cluster.key, node<i>/{data/,node.log,pid,cluster.key}

set -euo pipefail

TESTNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTNET_DIR=${TESTNET_DIR:-$TESTNET_ROOT/.testnet}
TN_BRIDGE=tmbr0
TN_NET=198.18.0
TN_GATEWAY=$TN_NET.1
TN_UI_PORT=8080
TN_P2P_PORT=4001
TN_MAX_NODES=99
# Seconds to wait for a node's UI to answer /api/health after its start.
TN_START_TIMEOUT=${TESTNET_START_TIMEOUT:-30}

tn_die() {
  echo "testnet: $*" >&2
  exit 1
}

tn_require_root() {
  if [[ $(id -u) -ne 0 ]]; then
    tn_die "needs root (it creates network namespaces, a bridge and nftables rules); run it with sudo"
  fi
}

# Serializes the scripts that make or remove parts of the testnet, machine-wide (one testnet per
# machine). Scripts they run inherit TN_LOCK_HELD and do not take it again; nodes do not inherit
# the lock's file descriptor.
tn_lock() {
  [[ -z ${TN_LOCK_HELD:-} ]] || return 0
  exec 9>>/run/lock/taskmesh-testnet.lock
  flock -w 120 9 || tn_die "another testnet script has held /run/lock/taskmesh-testnet.lock for 2 minutes"
  export TN_LOCK_HELD=1
}

tn_require_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || tn_die "needs '$t' (apt-get install -y iproute2 nftables curl)"
  done
}

# Checks that $1 is a node number 1..TN_MAX_NODES.
tn_check_index() {
  [[ $1 =~ ^[1-9][0-9]?$ ]] || tn_die "node number '$1' is not in 1..$TN_MAX_NODES"
}

tn_ns() { echo "tm$1"; }
tn_veth() { echo "tmv$1"; }
tn_ip() { echo "$TN_NET.$((10 + $1))"; }
tn_node_dir() { echo "$TESTNET_DIR/node$1"; }
tn_ui_url() { echo "http://$(tn_ip "$1"):$TN_UI_PORT"; }

tn_bin() {
  local bin=${TASKMESH_BIN:-$TESTNET_ROOT/target/debug/taskmesh}
  [[ $bin == /* ]] || bin=$PWD/$bin
  [[ -x $bin ]] || tn_die "no taskmesh binary at $bin (cargo build -p taskmesh, or set TASKMESH_BIN)"
  echo "$bin"
}

tn_ns_exists() { [[ -e /run/netns/$(tn_ns "$1") ]]; }

# The node numbers whose namespaces exist, ascending.
tn_existing_nodes() {
  local n
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^tm\([1-9][0-9]\{0,1\}\)$/\1/p' | sort -n); do
    echo "$n"
  done
}

tn_bridge_up() {
  if ! ip link show "$TN_BRIDGE" >/dev/null 2>&1; then
    ip link add "$TN_BRIDGE" type bridge
    # Flood multicast to every port: mDNS (224.0.0.251) must reach every namespace, and there is
    # no IGMP querier on this bridge.
    ip link set "$TN_BRIDGE" type bridge mcast_snooping 0 stp_state 0 forward_delay 0
    # No IPv6 on the bridge: the root namespace says nothing onto the testnet by itself.
    sysctl -qw "net.ipv6.conf.$TN_BRIDGE.disable_ipv6=1" 2>/dev/null || true
    ip addr add "$TN_GATEWAY/24" dev "$TN_BRIDGE"
  fi
  ip link set "$TN_BRIDGE" up
}

# Creates namespace tm<i> joined to the bridge, idempotently.
tn_ns_up() {
  local i=$1 ns veth ip
  ns=$(tn_ns "$i")
  veth=$(tn_veth "$i")
  ip=$(tn_ip "$i")
  tn_bridge_up
  if ! tn_ns_exists "$i"; then
    ip netns add "$ns"
  fi
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" 2>/dev/null || true
  ip link set "$veth" master "$TN_BRIDGE" multicast on up
  ip -n "$ns" link set eth0 multicast on up
  ip -n "$ns" addr replace "$ip/24" dev eth0
  # Multicast (mDNS) leaves through eth0; there is no default route, so nothing else can leave
  # the testnet subnet.
  ip -n "$ns" route replace 224.0.0.0/4 dev eth0
}

tn_pid_of() {
  local f
  f=$(tn_node_dir "$1")/pid
  [[ -s $f ]] && cat "$f"
}

# The pid of node i's taskmesh process: the pid file's, or, when that names the strace of a slow
# disk, the taskmesh process strace started.
tn_node_pid() {
  local pid child
  pid=$(tn_pid_of "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == strace ]]; then
    for child in $(cat "/proc/$pid/task/"*/children 2>/dev/null); do
      if [[ $(cat "/proc/$child/comm" 2>/dev/null) == taskmesh ]]; then
        echo "$child"
        return 0
      fi
    done
    return 1
  fi
  echo "$pid"
}

# Whether node i's process runs (its pid is alive and in its namespace).
tn_running() {
  local pid
  pid=$(tn_pid_of "$1" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  tn_ns_exists "$1" && ip netns pids "$(tn_ns "$1")" 2>/dev/null | grep -qx "$pid"
}

# Kills every process in namespace tm<i> with SIGKILL and waits (bounded) until they are gone.
tn_kill_ns() {
  local i=$1 ns pids tries
  ns=$(tn_ns "$i")
  tn_ns_exists "$i" || return 0
  for ((tries = 0; tries < 50; tries++)); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  tn_die "processes in $ns did not exit after 5 s: $(ip netns pids "$ns" | tr '\n' ' ')"
}

# Starts node i in its namespace, in the background, with its own session and the key of
# node<i>/cluster.key (falls back to the shared key). Does not wait.
tn_start_node() {
  local i=$1 bin dir ns ip
  bin=$(tn_bin)
  dir=$(tn_node_dir "$i")
  ns=$(tn_ns "$i")
  ip=$(tn_ip "$i")
  mkdir -p "$dir/data"
  if [[ ! -s $dir/cluster.key ]]; then
    [[ -s $TESTNET_DIR/cluster.key ]] || tn_die "no cluster key in $TESTNET_DIR (run testnet/up first)"
    cp "$TESTNET_DIR/cluster.key" "$dir/cluster.key"
  fi
  rm -f "$dir/pid"
  {
    echo "=== $(date -Is) start node$i in $ns: $bin"
  } >>"$dir/node.log"
  # The child writes its own pid, then becomes taskmesh (exec keeps the pid). Its output goes to
  # node.log only, so callers that read our stdout never wait for it.
  # Settings come from the command line only: no TASKMESH_* from the caller (TASKMESH_NO_MDNS
  # would turn mDNS off) but the log filter.
  local unset=() var
  for var in $(compgen -e | grep '^TASKMESH_' || true); do
    [[ $var == TASKMESH_LOG ]] || unset+=(-u "$var")
  done
  # A slow disk (TN_SLOW_DISK, microseconds): strace delays every fsync, fdatasync, msync and
  # sync_file_range of the node (and of its threads and children) by that much. The pid file then
  # names strace; tn_node_pid finds the node under it.
  local wrap=()
  if [[ -n ${TN_SLOW_DISK:-} ]]; then
    tn_require_tools strace
    local calls=fsync,fdatasync,msync,sync_file_range
    wrap=(strace -f --seccomp-bpf -qq -o /dev/null -e "trace=$calls" -e "inject=$calls:delay_enter=$TN_SLOW_DISK")
  fi
  # shellcheck disable=SC2016 # $$ and $1 are the inner bash's
  # The key is given as a file (0600), never on the command line, where `ps` would show it.
  env "${unset[@]}" TASKMESH_LOG="${TASKMESH_LOG:-info}" NO_COLOR=1 \
    ip netns exec "$ns" setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/pid" \
    "${wrap[@]}" "$bin" run \
    --data-dir "$dir/data" \
    --cluster-key-file "$dir/cluster.key" \
    --listen "$ip:$TN_UI_PORT" \
    --p2p-listen "/ip4/$ip/tcp/$TN_P2P_PORT" \
    --name "node$i" \
    </dev/null >>"$dir/node.log" 2>&1 9>&- &
  disown 2>/dev/null || true
}

# Waits (bounded) until node i's UI answers /api/health; fails with the log's tail otherwise.
tn_wait_healthy() {
  local i=$1 url dir deadline
  url=$(tn_ui_url "$i")/api/health
  dir=$(tn_node_dir "$i")
  deadline=$((SECONDS + TN_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if curl -sf --noproxy '*' --max-time 1 -o /dev/null "$url"; then
      return 0
    fi
    if [[ -s $dir/pid ]] && ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "testnet: node$i exited; the end of $dir/node.log:" >&2
      tail -n 20 "$dir/node.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "testnet: node$i did not answer $url within ${TN_START_TIMEOUT}s; the end of $dir/node.log:" >&2
  tail -n 20 "$dir/node.log" >&2 || true
  return 1
}

tn_table_header() {
  printf '%-7s %-5s %-13s %-24s %s\n' node netns ip ui token-file
}

tn_table_row() {
  local i=$1
  printf '%-7s %-5s %-13s %-24s %s\n' "node$i" "$(tn_ns "$i")" "$(tn_ip "$i")" "$(tn_ui_url "$i")" \
    "$(tn_node_dir "$i")/data/access-token"
}

# --- faults: one nftables table `inet testnet` per namespace, dropping the addresses in a set ---

tn_nft_ensure() {
  local ns
  ns=$(tn_ns "$1")
  ip netns exec "$ns" nft list table inet testnet >/dev/null 2>&1 && return 0
  ip netns exec "$ns" nft -f - <<NFT
table inet testnet {
  set blocked {
    type ipv4_addr
    flags interval
    auto-merge
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "eth0" ip saddr @blocked drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "eth0" ip daddr @blocked drop
  }
}
NFT
}

# Drops, inside node i's namespace, traffic to and from the given addresses or ranges.
tn_nft_block() {
  local i=$1
  shift
  tn_ns_exists "$i" || tn_die "node$i has no namespace (is the testnet up?)"
  tn_nft_ensure "$i"
  local elems
  elems=$(IFS=,; echo "$*")
  ip netns exec "$(tn_ns "$i")" nft add element inet testnet blocked "{ $elems }"
}

tn_nft_clear() {
  local ns
  ns=$(tn_ns "$1")
  ip netns exec "$ns" nft delete table inet testnet 2>/dev/null || true
}
