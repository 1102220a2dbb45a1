"""Run inside ``unshare -n``: does a --heartbeat tcp server find a dead peer?

In the fresh network namespace's loopback: start a server with the given
options, log in one client, then take loopback down, so that nothing the
server sends (its keepalive probes) arrives and nothing comes back: the
network between them is dead, but neither end closed its socket.  Prints
one JSON line: whether the server ended the session, after how long, and
its exit line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from presence.bench.launch import LaunchedServer

WAIT = 30.0


def main(options: list[str]) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = LaunchedServer(["--port", "tcp:0:interface=127.0.0.1", *options])
    try:
        with socket.create_connection((server.host, server.port)) as client:
            client.sendall(b'{"user_id":1}\n')
            welcome = client.recv(200)
            subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
            down = time.monotonic()
            while "exits" not in server.log and time.monotonic() - down < WAIT:
                time.sleep(0.05)
            print(json.dumps({
                "welcome": welcome.decode(),
                "ended": "exits" in server.log,
                "seconds": round(time.monotonic() - down, 2),
                "exit": [line for line in server.lines if "exits" in line],
            }))
    finally:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
