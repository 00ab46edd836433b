"""Slow clients: opens COUNT connections one after the other, sends the start
of a request head on each and then nothing, and waits (at most WAIT seconds
in all) for the server to close them.

Usage: slow_headers.py WAIT COUNT

Prints one JSON object: for each connection in opening order, after how many
seconds the server closed it (null if it did not within WAIT) and whether it
sent anything first.
"""

import json
import select
import socket
import sys
import time


def main():
    wait, count = float(sys.argv[1]), int(sys.argv[2])
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("169.254.169.254", 80), timeout=5)
        sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Slow: ")
        sock.setblocking(False)
        conns.append({"sock": sock, "sent": time.monotonic(), "closed_after": None, "received": 0})
    deadline = time.monotonic() + wait
    open_conns = list(conns)
    while open_conns and time.monotonic() < deadline:
        readable, _, _ = select.select([c["sock"] for c in open_conns], [], [], deadline - time.monotonic())
        for conn in open_conns[:]:
            if conn["sock"] not in readable:
                continue
            try:
                chunk = conn["sock"].recv(4096)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                conn["received"] += len(chunk)
                continue
            conn["closed_after"] = time.monotonic() - conn["sent"]
            conn["sock"].close()
            open_conns.remove(conn)
    print(json.dumps([{"closed_after": c["closed_after"], "received": c["received"]} for c in conns]))


if __name__ == "__main__":
    main()
