"""A guest that asks for its own instance-id again and again, each time on a
new connection, and checks every answer is its own.

Usage: own_answers.py EXPECTED_ID SECONDS INTERVAL

Runs for SECONDS, one request every INTERVAL seconds (at most). Prints one
JSON object: how many answers were its own, how many were 200s with
another value (wrong: must never happen), how many failed (no answer,
refused, reset, timeout, or another status), when each failure happened
(Unix time) and what it was, and the wrong answers seen.
"""

import http.client
import json
import sys
import time

HOST = "169.254.169.254"
PATH = "/latest/meta-data/instance-id"


def main():
    expected, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    ok, wrong, failures, wrong_values = 0, 0, [], []
    kinds = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.monotonic()
        try:
            conn = http.client.HTTPConnection(HOST, 80, timeout=2)
            conn.request("GET", PATH)
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace").strip()
            conn.close()
            if response.status == 200 and body == expected:
                ok += 1
            elif response.status == 200:
                wrong += 1
                wrong_values.append(body[:80])
            else:
                kind = f"HTTP {response.status}"
                kinds[kind] = kinds.get(kind, 0) + 1
                failures.append(time.time())
        except Exception as err:  # noqa: BLE001 - counted, not hidden
            kind = type(err).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
            failures.append(time.time())
        rest = interval - (time.monotonic() - began)
        if rest > 0:
            time.sleep(rest)
    print(json.dumps({
        "ok": ok,
        "wrong": wrong,
        "wrong_values": wrong_values[:20],
        "failed": len(failures),
        "failure_kinds": kinds,
        "failure_times": failures[:20000],
    }))


if __name__ == "__main__":
    main()
