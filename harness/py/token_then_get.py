"""A token request and then an ordinary one on the same connection: sends
`PUT /latest/api/token`, waits a moment (its answer may never come), sends
`GET /latest/meta-data/instance-id`, and collects whatever the server's
answers deliver within WAIT seconds.

Usage: token_then_get.py WAIT

Prints one JSON object: the status lines received, and whether a token
answer (one echoing the TTL header) was among them.
"""

import json
import socket
import sys
import time

HEAD = "Host: 169.254.169.254\r\n"


def main():
    wait = float(sys.argv[1])
    sock = socket.create_connection(("169.254.169.254", 80), timeout=5)
    sock.sendall(
        f"PUT /latest/api/token HTTP/1.1\r\n{HEAD}X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\r\n".encode()
    )
    time.sleep(0.5)
    sock.sendall(f"GET /latest/meta-data/instance-id HTTP/1.1\r\n{HEAD}\r\n".encode())
    deadline = time.monotonic() + wait
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        received += chunk
    text = received.decode(errors="replace")
    print(
        json.dumps(
            {
                "status_lines": [line for line in text.split("\r\n") if line.startswith("HTTP/1.1 ")],
                "token": "x-aws-ec2-metadata-token-ttl-seconds" in text.lower(),
            }
        )
    )


if __name__ == "__main__":
    main()
