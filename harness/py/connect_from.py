"""One TCP handshake attempt from a chosen source address: what a guest that
tries to reach an address it should not (the metadata server's own, say)
would do.

Usage: connect_from.py SOURCE DEST PORT TIMEOUT

Binds to SOURCE (an address the namespace holds), connects to DEST:PORT and
gives up after TIMEOUT seconds. Prints one JSON object: whether the
handshake completed, and the error otherwise.
"""

import json
import socket
import sys


def main():
    source, dest, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    result = {"connected": False, "error": None}
    try:
        sock.bind((source, 0))
        sock.connect((dest, port))
        result["connected"] = True
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        sock.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
