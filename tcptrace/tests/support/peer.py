"""A TCP server in its own process, so tests can tell its pid from the client's.

usage: peer.py ipv4|ipv6 close-first|wait-eof
Prints the listening port, serves one connection, then prints "done".
  close-first: send a greeting and close at once (the server closes first).
  wait-eof:    read until the client closes, then close (the client closes first).
"""
import socket
import sys

family, mode = sys.argv[1], sys.argv[2]
af, host = (socket.AF_INET6, "::1") if family == "ipv6" else (socket.AF_INET, "127.0.0.1")
listener = socket.socket(af, socket.SOCK_STREAM)
listener.bind((host, 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
if mode == "close-first":
    conn.sendall(b"hello\n")
else:
    while conn.recv(4096):
        pass
conn.close()
print("done", flush=True)
sys.stdin.readline()  # keep the listener until the test is done with it
