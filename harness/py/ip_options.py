"""A request whose packets carry IPv4 options (Record Route), which no real
guest sends to the metadata service.

Usage: ip_options.py PATH TIMEOUT_SECONDS

Prints one JSON object: the status if an answer came (None otherwise), and
the error that ended the attempt.
"""

import json
import socket
import sys

HOST = "169.254.169.254"
# Record Route (type 7), length 7, pointer 4, room for one address; then End
# of Options to pad to 8 bytes: the header grows to IHL 7.
RECORD_ROUTE = bytes([7, 7, 4, 0, 0, 0, 0, 0])


def main():
    path, timeout = sys.argv[1], float(sys.argv[2])
    status, error = None, None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, RECORD_ROUTE)
    sock.settimeout(timeout)
    try:
        sock.connect((HOST, 80))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data else None
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        error = repr(err)
    finally:
        sock.close()
    print(json.dumps({"status": status, "error": error}))


if __name__ == "__main__":
    main()
