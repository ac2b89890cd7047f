"""A program for cutover's responsiveness tests: on each SIGUSR1 it leaves
an orphan behind (a grandchild that exits at once, so cutover must reap it)
and then writes the orphan's pid to <dir>/usr1-<n>, so the test can see both
that the signal arrived and whether the orphan was reaped."""
import os, signal, sys, time

out = sys.argv[1]
count = 0

def on_usr1(signum, frame):
    global count
    count += 1
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    orphan = os.read(r, 32).decode()
    os.close(r)
    os.waitpid(child, 0)
    tmp = os.path.join(out, f".usr1-{count}")
    with open(tmp, "w") as f:
        f.write(orphan)
    os.rename(tmp, os.path.join(out, f"usr1-{count}"))

signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
