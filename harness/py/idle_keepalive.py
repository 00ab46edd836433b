"""A quiet guest's keep-alive connection: one request, then the connection
idles, then a second request on the same connection.

Usage: idle_keepalive.py PATH IDLE_SECONDS

Prints one JSON object: the statuses of the answers that came, the error
that ended the run (if any), and when (Unix time) each request was sent.
"""

import http.client
import json
import sys
import time

HOST = "169.254.169.254"


def main():
    path, idle = sys.argv[1], float(sys.argv[2])
    statuses, sent, error = [], [], None
    conn = http.client.HTTPConnection(HOST, 80, timeout=5)
    try:
        for i in range(2):
            if i:
                time.sleep(idle)
            sent.append(time.time())
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        error = repr(err)
    finally:
        conn.close()
    print(json.dumps({"statuses": statuses, "error": error, "sent": sent}))


if __name__ == "__main__":
    main()
