"""A noisy guest: GETs one path over a few keep-alive connections, REQUESTS
times in all, spread evenly over SECONDS (and never longer than SECONDS + 2).

Usage: hammer.py PATH REQUESTS CONNECTIONS SECONDS

Prints one JSON object: the count of each status, the Retry-After values of
the 429s, the requests sent, when the run started and ended (Unix time), and
the CPU time the client itself used.
"""

import http.client
import json
import sys
import threading
import time

HOST = "169.254.169.254"


def main():
    path, total, connections, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    lock = threading.Lock()
    state = {"sent": 0, "statuses": {}, "retry_after": {}, "errors": 0, "reconnects": 0}
    start = time.time()
    deadline = time.monotonic() + seconds + 2
    per_worker = total // connections
    interval = seconds / per_worker

    def worker():
        conn = http.client.HTTPConnection(HOST, 80, timeout=5)
        began = time.monotonic()
        for n in range(per_worker):
            ahead = began + n * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() >= deadline:
                break
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    state["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, 80, timeout=5)
                continue
            retry_after = response.getheader("Retry-After")
            with lock:
                state["sent"] += 1
                key = str(response.status)
                state["statuses"][key] = state["statuses"].get(key, 0) + 1
                if response.status == 429:
                    value = str(retry_after)
                    state["retry_after"][value] = state["retry_after"].get(value, 0) + 1
                if response.will_close:
                    state["reconnects"] += 1
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection(HOST, 80, timeout=5)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = time.time()
    state.update({"start": start, "end": end, "cpu_seconds": time.process_time()})
    print(json.dumps(state))


if __name__ == "__main__":
    main()
