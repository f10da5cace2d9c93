"""Runs inside a test-made network namespace (tcp_tw_reuse=1 there): sockets made before
tcptrace starts, for each family (127.0.0.1 and ::1), on server port PORT:

- two connections held open (both ends here), which the server closes first on cue;
- a TIME-WAIT on a client port (the client closed first), left to expire;
- a TIME-WAIT on another client port, which on cue a new connect from that same port
  reuses, killing it early;
- two sockets in CLOSE_WAIT: their clients closed, and this server never does.

Prints one JSON line with the ports, waits for a line on stdin, closes and reconnects,
prints "done", and keeps its CLOSE_WAIT sockets until stdin closes.
"""
import json
import socket
import sys
import time

port = int(sys.argv[1])
made = {}
keep = []


def connect(family, host, server, bind_port=0):
    client = socket.socket(family)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind((host, bind_port))
    client.connect((host, port))
    accepted, _ = server.accept()
    return client, accepted


for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(16)
    ports = {}
    for name in ("natural", "reused"):
        client, accepted = connect(family, host, server)
        ports[name] = client.getsockname()[1]
        client.close()          # the client closes first: its port holds a TIME-WAIT
        accepted.recv(1)
        accepted.close()
    pairs = [connect(family, host, server) for _ in range(2)]
    ports["pairs"] = [c.getsockname()[1] for c, _ in pairs]
    leaked = [connect(family, host, server) for _ in range(2)]
    ports["close_wait"] = [c.getsockname()[1] for c, _ in leaked]
    for client, accepted in leaked:
        client.close()          # the peer closes; `accepted` stays open: CLOSE_WAIT
        keep.append(accepted)
    made[host] = {"server": server, "pairs": pairs, "ports": ports}

print(json.dumps({host: m["ports"] for host, m in made.items()}), flush=True)
sys.stdin.readline()
time.sleep(1.2)                 # tcp_tw_reuse takes a TIME-WAIT older than 1 s
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    m = made[host]
    for client, accepted in m["pairs"]:
        accepted.close()        # the server closes first
        client.recv(1)
        client.close()
    client, accepted = connect(family, host, m["server"], m["ports"]["reused"])
    client.close()
    accepted.recv(1)
    accepted.close()
print("done", flush=True)
sys.stdin.readline()
