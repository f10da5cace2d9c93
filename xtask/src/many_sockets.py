"""For `cargo xtask bench`: holds COUNT loopback connections open (2 × COUNT sockets, both
ends here) in the current network namespace. A process may hold only so many descriptors
(RLIMIT_NOFILE, which a container may not let even root raise), so the connections are
spread over worker processes, each with its own listener. Prints "ready" once all are up,
then waits for stdin to close."""
import os
import resource
import socket
import sys

count = int(sys.argv[1])
limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
per_worker = max(1, (limit - 100) // 2)
ready_r, ready_w = os.pipe()
workers = []
left = count
while left > 0:
    mine = min(per_worker, left)
    left -= mine
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(4096)
        held = []
        for _ in range(mine):
            client = socket.create_connection(server.getsockname())
            held.append((client, server.accept()[0]))
        os.write(ready_w, b".")
        sys.stdin.read()
        os._exit(0)
    workers.append(pid)
os.close(ready_w)
for _ in workers:
    os.read(ready_r, 1)
print("ready", flush=True)
sys.stdin.read()
for pid in workers:
    os.waitpid(pid, 0)
