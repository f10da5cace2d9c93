"""Known amounts of data both ways over one TCP connection, for the counter tests.

usage: transfer.py server HOST SEND    listen on HOST, print the port, serve one connection:
                                       read until EOF, send SEND bytes, close, print "done"
       transfer.py client HOST PORT SEND
                                       connect, send SEND bytes, shut down writing, read
                                       until EOF, print "LOCALPORT RECEIVED", close
       transfer.py connect HOST PORT   connect once and print the error's name (or "ok")
"""
import errno
import socket
import sys

mode, host = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in host else socket.AF_INET


def receive_all(sock):
    total = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return total
        total += len(chunk)


if mode == "server":
    send = int(sys.argv[3])
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    receive_all(conn)
    conn.sendall(b"s" * send)
    conn.close()
    print("done", flush=True)
elif mode == "client":
    port, send = int(sys.argv[3]), int(sys.argv[4])
    sock = socket.create_connection((host, port))
    local_port = sock.getsockname()[1]
    sock.sendall(b"c" * send)
    sock.shutdown(socket.SHUT_WR)
    received = receive_all(sock)
    sock.close()
    print(local_port, received, flush=True)
elif mode == "connect":
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect((host, int(sys.argv[3])))
        print("ok", flush=True)
    except OSError as error:
        print(errno.errorcode.get(error.errno, error.errno), flush=True)
