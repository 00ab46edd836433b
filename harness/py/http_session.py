"""One keep-alive connection, driven line by line: each line on stdin is a
path to GET on the same connection; each answer is one JSON line on stdout
(status, body, and the local port, which shows the connection was kept).
Ends at end of input.
"""

import http.client
import json
import sys

conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
for line in sys.stdin:
    path = line.strip()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    answer = {
        "status": response.status,
        "body": body.decode(errors="replace"),
        "local_port": conn.sock.getsockname()[1] if conn.sock else None,
    }
    print(json.dumps(answer), flush=True)
conn.close()
