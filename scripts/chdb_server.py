"""Serve ClickHouse over HTTP and the native protocol from the chdb-core Python package.

Ferry's tests and quickstart need a real, recent ClickHouse. chdb-core ships the whole
ClickHouse engine as a Python extension; its one-shot query entry point runs the full
clickhouse-local program, which can open the server listeners with `SYSTEM START LISTEN`.
The listeners live only as long as the query that opened them, so the query ends with a
statement that never finishes, and the process serves until it is signalled.

Usage (scripts/services runs it; see there for the ports and paths it uses):

    python chdb_server.py --data-dir DIR --http-port N --tcp-port N [--listen-host H]

Under DIR: `data/` holds the databases (kept across restarts, also after SIGKILL),
`conf/config.xml` the listener settings (clickhouse-local reads ./config.xml at start).
Stop it with SIGTERM or SIGINT.
"""

import argparse
import fcntl
import os
import signal
import sys
from xml.sax.saxutils import escape

# Everything after the two START LISTEN statements only keeps the listeners open: one row per
# block, one second per row, for longer than anyone will wait.
KEEP_ALIVE = (
    "SELECT sleepEachRow(1) FROM numbers(1000000000000) "
    "SETTINGS max_block_size = 1 FORMAT Null"
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--tcp-port", type=int, required=True)
    p.add_argument("--listen-host", default="127.0.0.1")
    return p.parse_args()


def log(msg):
    print(f"chdb_server: {msg}", file=sys.stderr, flush=True)


def main():
    args = parse_args()
    # Detach from the caller's session so the server outlives the shell that started it.
    if os.getpid() != os.getsid(0):
        os.setsid()
    # The engine blocks inside C++, where Python signal handlers never get to run: keep the
    # default actions so SIGINT and SIGTERM end the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    root = os.path.abspath(args.data_dir)
    conf_dir = os.path.join(root, "conf")
    data_dir = os.path.join(root, "data")
    os.makedirs(conf_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)

    # Two engines on one data dir would corrupt it; the lock is released when the process dies.
    lock = open(os.path.join(root, "server.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another server is already using {root}")
        return 1

    with open(os.path.join(conf_dir, "config.xml"), "w") as f:
        f.write(
            "<clickhouse>\n"
            f"  <listen_host>{escape(args.listen_host)}</listen_host>\n"
            f"  <http_port>{args.http_port}</http_port>\n"
            f"  <tcp_port>{args.tcp_port}</tcp_port>\n"
            "</clickhouse>\n"
        )

    from chdb import _chdb  # loads the engine (~0.5 GB); import late so argument errors are quick

    os.chdir(conf_dir)
    log(
        f"pid {os.getpid()}: serving {data_dir} on {args.listen_host}, "
        f"http port {args.http_port}, tcp port {args.tcp_port}"
    )
    sql = f"SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; {KEEP_ALIVE}"
    res = _chdb.query(sql, "TabSeparated", path=data_dir)
    err = res.error_message()
    # Reaching this line means the keep-alive query ended: a listener failed to open, or
    # someone ran KILL QUERY on it. Either way the listeners are gone, so exit.
    log(f"stopped: {err.strip() if err else 'the server query ended (see any error above)'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
