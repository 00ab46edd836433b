"""A quiet guest: GETs one path N times in a row, each on a new connection
(as cloud-init does), and times each request from connect to last byte.

Usage: latency.py PATH N

Prints one JSON object: the statuses, the latencies in seconds, and when the
run started and ended (Unix time).
"""

import http.client
import json
import sys
import time

HOST = "169.254.169.254"


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    statuses, latencies = [], []
    start = time.time()
    for _ in range(count):
        began = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, 80, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - began)
        statuses.append(response.status)
        conn.close()
    end = time.time()
    print(json.dumps({"statuses": statuses, "latencies": latencies, "start": start, "end": end}))


if __name__ == "__main__":
    main()
