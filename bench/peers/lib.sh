# bench/peers/lib.sh — what the peer scripts share (sourced, not run).
#
# A peer script is `bench/peers/NAME ACTION` with its state in the
# environment:
#   PEER_DIR     its work directory (config, queue or spool, log, pid);
#                created by `configure`, removed by the caller
#   PEER_PKI     a directory holding ec.crt ec.key (ECDSA P-256) and
#                rsa.crt rsa.key (RSA-2048): the same files for every server
#   PEER_CPU     the CPU the server is pinned to (default 1)
#   PEER_CGROUP  a cgroup directory (v1 cpuacct) the server is started in,
#                so that all its processes are counted (optional)
# and ACTION one of:
#   install      make sure the server is installed (apt-get; idempotent)
#   configure    write the configuration under PEER_DIR, choose free ports
#                and write them to PEER_DIR/ports as shell assignments:
#                  PLAIN=port   plaintext SMTP (STARTTLS offered when the
#                               server can, with the ECDSA certificate)
#                  TLS_EC=port  STARTTLS with the ECDSA certificate (or empty)
#                  TLS_RSA=port STARTTLS with the RSA certificate (or empty)
#   start        start it (pinned, in the cgroup) and wait for its ports
#   stop         stop it and wait until every process is gone
#   reset        (stopped) forget what it stored: empty queue or spool
#   describe     one line: version and how it is set up
# Every server listens on 127.0.0.1 only.

PEER_CPU=${PEER_CPU:-1}

peer_die() {
	echo "bench/peers/${PEER_NAME:-?}: $*" >&2
	exit 1
}

peer_need_dir() {
	[[ -n "${PEER_DIR:-}" ]] || peer_die "PEER_DIR is not set"
	mkdir -p "$PEER_DIR"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port [seconds]
	local tries=$((${2:-10} * 20))
	for _ in $(seq 1 "$tries"); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

load_ports() {
	PLAIN= TLS_EC= TLS_RSA=
	# shellcheck disable=SC1091
	source "$PEER_DIR/ports"
}

# Run a command pinned to PEER_CPU inside PEER_CGROUP, with room for
# many descriptors (the idle-session row opens 10,000 connections); the
# command's pid stays the same through the execs.
peer_exec() { # command...
	local cg=${PEER_CGROUP:-}
	exec sh -c '
		if [ -n "$1" ]; then echo $$ >"$1/cgroup.procs" || exit 1; fi
		ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
		cpu=$2; shift 2
		exec taskset -c "$cpu" "$@"' sh "$cg" "$PEER_CPU" "$@"
}

# Wait for a pid to be gone (it is not our child: poll).
wait_gone() { # pid [seconds]
	local tries=$((${2:-30} * 10))
	for _ in $(seq 1 "$tries"); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

apt_install() { # package...
	local missing=() p status
	for p in "$@"; do
		status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[[ "$status" == "install ok installed" ]] || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	echo "bench/peers: installing ${missing[*]}" >&2
	apt-get update -q </dev/null >/dev/null
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null >/dev/null
}
