"""Many sequential connections from one guest, closed in a chosen way, to
exercise how the datapath forgets a flow once its connection is over.

Usage: connections.py MODE PATH N

MODE is one of:
  server-closes  one request with "Connection: close" per connection, read to
                 EOF: the server sends its FIN first.
  client-closes  two keep-alive requests per connection, then the client
                 hangs up: the guest sends its FIN first.
  reset          one keep-alive request, then close with SO_LINGER 0: the
                 guest ends the connection with a RST.

Prints one JSON object: how many responses were complete 200s, and the
failures (as strings).
"""

import json
import socket
import struct
import sys

HOST = "169.254.169.254"


def read_response(sock, buf):
    """One HTTP/1.1 response with a Content-Length body: (status, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed before the response head")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("no content-length")
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed in the body")
        buf += chunk
    return status, buf[length:]


def request(path, close):
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def one(mode, path):
    """One connection; the number of 200 responses it got."""
    sock = socket.create_connection((HOST, 80), timeout=5)
    ok = 0
    try:
        if mode == "server-closes":
            sock.sendall(request(path, close=True))
            status, rest = read_response(sock, b"")
            ok += status == 200
            # The server closes first: wait for its FIN before closing.
            while rest or sock.recv(65536):
                rest = b""
        elif mode == "client-closes":
            rest = b""
            for _ in range(2):
                sock.sendall(request(path, close=False))
                status, rest = read_response(sock, rest)
                ok += status == 200
        elif mode == "reset":
            sock.sendall(request(path, close=False))
            status, _ = read_response(sock, b"")
            ok += status == 200
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            raise ValueError(f"unknown mode {mode}")
    finally:
        sock.close()
    return ok


def main():
    mode, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ok, failures = 0, []
    for _ in range(count):
        try:
            ok += one(mode, path)
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            failures.append(repr(err))
    print(json.dumps({"ok": ok, "failures": failures}))


if __name__ == "__main__":
    main()
