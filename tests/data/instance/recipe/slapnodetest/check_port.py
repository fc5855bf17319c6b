"""`python -m slapnodetest.check_port HOST PORT [SECONDS]`: exit 0 once the port accepts a connection."""
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + float(sys.argv[3] if len(sys.argv) > 3 else 5)
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        print(f"port {port} answers")
        sys.exit(0)
    except OSError as e:
        if time.monotonic() > deadline:
            print(f"port {port} does not answer: {e}")
            sys.exit(1)
        time.sleep(0.05)
