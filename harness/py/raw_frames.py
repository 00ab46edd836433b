"""Sends or captures whole Ethernet frames on an interface (AF_PACKET), for
frames no socket API makes: VLAN tags without the 8021q module, say.

Usage:
  raw_frames.py send IFACE HEXFRAME...
      Sends each frame as given (hex, Ethernet header included).
      Prints {"sent": N}.
  raw_frames.py capture IFACE SECONDS MARKERHEX
      Captures for SECONDS and prints {"frames": [...]}: every frame that
      contains the marker bytes, with the VLAN tag the kernel took off into
      packet metadata ("vlan_tci", "vlan_tpid", None when there was none)
      and the frame's bytes as received ("hex").
"""

import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("IIIHHHH")


def send(iface, frames):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    for frame in frames:
        sock.send(bytes.fromhex(frame))
    print(json.dumps({"sent": len(frames)}))


def capture(iface, seconds, marker):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.bind((iface, 0))
    deadline = time.monotonic() + seconds
    frames = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(AUXDATA.size))
        except socket.timeout:
            break
        if marker not in data:
            continue
        tci = tpid = None
        for level, kind, value in ancdata:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= AUXDATA.size:
                status, _, _, _, _, vlan_tci, vlan_tpid = AUXDATA.unpack(value[: AUXDATA.size])
                if status & TP_STATUS_VLAN_VALID:
                    tci = vlan_tci
                    tpid = vlan_tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
        frames.append({"vlan_tci": tci, "vlan_tpid": tpid, "hex": data.hex()})
    print(json.dumps({"frames": frames}))


def main():
    mode, iface = sys.argv[1], sys.argv[2]
    if mode == "send":
        send(iface, sys.argv[3:])
    elif mode == "capture":
        capture(iface, float(sys.argv[3]), bytes.fromhex(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
