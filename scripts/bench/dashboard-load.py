#!/usr/bin/env python3
"""The dashboard under load: a room of N PCs served by `cowctl serve`, B browsers doing what
the page does (the day's history once, then every 5 s the PC list and the new samples, and the
live event stream held open), while PCs are reset through the API. Prints each route's
latency percentiles against the 100 ms target, and the service's memory against the fill
history's cost (34,560 bytes per PC).

    scripts/bench-dashboard.sh            (runs this with the release build)
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, threading, time

COWCTL = sys.argv[1]
PCS = int(os.environ.get("BENCH_DASH_PCS", "200"))
BROWSERS = int(os.environ.get("BENCH_DASH_BROWSERS", "20"))
SECONDS = float(os.environ.get("BENCH_DASH_SECONDS", "60"))
REFRESH = 5.0
RING_BYTES = 34560
TOKEN = "bench-dashboard-admin-token-0123456789"
AUTH = {"Authorization": "Bearer " + TOKEN}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


class Client:
    """HTTP/1.1 keep-alive from its own loopback address, as another machine would be."""

    def __init__(self, source, port):
        self.source, self.port, self.conn = source, port, None

    def get(self, path):
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                       source_address=(self.source, 0))
            try:
                t = time.perf_counter()
                self.conn.request("GET", path, headers=AUTH)
                r = self.conn.getresponse()
                body = r.read()
                took = time.perf_counter() - t
                if r.status != 200:
                    raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
                return took, body
            except (ConnectionError, http.client.HTTPException):
                self.conn = None  # the service closes long-lived connections; open another
        raise SystemExit(f"GET {path}: the connection failed twice")


def main():
    work = tempfile.mkdtemp(prefix="cowctl-dash-")
    admin, pcs_port, nbd = free_port(), free_port(), free_port()
    with open(f"{work}/golden.img", "wb") as f:
        f.truncate(8 << 20)
    os.mkdir(f"{work}/cow")
    fd = os.open(f"{work}/token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (TOKEN + "\n").encode())
    os.close(fd)
    room = (
        f"backend: userspace\nimages:\n  g:\n    path: {work}/golden.img\n"
        f"defaults:\n  image: g\n  cow_dir: {work}/cow\n  cow_size: 16MiB\n  chunk: 4KiB\n  export: nbd\n"
        f"nbd:\n  listen: 127.0.0.1:{nbd}\n  socket: {work}/nbd.sock\n"
        f"http:\n  listen: 127.0.0.1:{pcs_port}\n  admin_listen: 127.0.0.1:{admin}\n  token_file: {work}/token\n"
        f"pcs:\n  - name: pc-{{001..{PCS:03d}}}\n"
    )
    with open(f"{work}/room.yaml", "w") as f:
        f.write(room)
    env = dict(os.environ, COWCTL_RUN_DIR=f"{work}/run", COWCTL_MANIFEST=f"{work}/room.yaml")
    out = subprocess.run([COWCTL, "apply"], env=env, capture_output=True, text=True)
    if out.returncode not in (0, 2):
        raise SystemExit(f"cowctl apply: {out.stderr}")
    pid = int(open(f"{work}/run/serve.pid").read())
    try:
        run(admin, pid, env)
    finally:
        subprocess.run([COWCTL, "down"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", work])


def run(admin, pid, env):
    time.sleep(1)
    rss_start = rss_kib(pid)
    lat = {"/api/v1/pcs": [], "/api/history (day)": [], "/api/history?since": [], "reset": []}
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS
    events_seen = [0] * BROWSERS
    failures = []

    def browser(i):
        c = Client(f"127.0.0.{10 + i}", admin)
        took, body = c.get("/api/history")
        day = json.loads(body)
        newest = max((s[-1][0] for s in day.values() if s), default=0) if isinstance(day, dict) else 0
        with lock:
            lat["/api/history (day)"].append(took)
        time.sleep(REFRESH * i / BROWSERS)  # browsers opened over one refresh period
        while time.monotonic() < stop:
            t1, _ = c.get("/api/v1/pcs")
            t2, body = c.get(f"/api/history?since={newest}")
            h = json.loads(body)
            if isinstance(h, dict):
                for s in h.values():
                    if s:
                        newest = max(newest, s[-1][0])
            with lock:
                lat["/api/v1/pcs"].append(t1)
                lat["/api/history?since"].append(t2)
            time.sleep(REFRESH)

    def stream(i):
        s = socket.create_connection(("127.0.0.1", admin), source_address=(f"127.0.0.{10 + i}", 0))
        s.settimeout(1)
        s.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n\r\n" % (admin, TOKEN.encode()))
        while time.monotonic() < stop:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                s = socket.create_connection(("127.0.0.1", admin), source_address=(f"127.0.0.{10 + i}", 0))
                s.settimeout(1)
                s.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n\r\n" % (admin, TOKEN.encode()))
                continue
            events_seen[i] += data.count(b"\ndata:") + data.startswith(b"data:")
        s.close()

    def resetter():
        # Resets through the admin API with the token, one PC a second.
        n = 0
        while time.monotonic() < stop:
            pc = f"pc-{(n % PCS) + 1:03d}"
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30, source_address=("127.0.0.5", 0))
            t = time.perf_counter()
            conn.request("POST", f"/api/v1/pcs/{pc}/reset", headers=AUTH)
            r = conn.getresponse()
            r.read()
            took = time.perf_counter() - t
            conn.close()
            if r.status != 200:
                failures.append(f"reset {pc}: HTTP {r.status}")
                return
            with lock:
                lat["reset"].append(took)
            n += 1
            time.sleep(1)

    threads = [threading.Thread(target=browser, args=(i,)) for i in range(BROWSERS)]
    threads += [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(BROWSERS)]
    threads.append(threading.Thread(target=resetter))
    for t in threads:
        t.start()
    peak = rss_start
    while time.monotonic() < stop:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.5)
    for t in threads[:BROWSERS] + threads[-1:]:
        t.join()
    rss_end = rss_kib(pid)
    rings = PCS * RING_BYTES / 1024

    print(f"bench-dashboard: {PCS} PCs, {BROWSERS} browsers (refresh every {REFRESH:.0f} s, event stream open), "
          f"a reset a second through the API, {SECONDS:.0f} s")
    print("| route | requests | p50 | p99 | max | p99 ÷ 100 ms target |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for route, xs in lat.items():
        if not xs:
            continue
        xs = sorted(xs)
        p50 = xs[len(xs) // 2] * 1e3
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3
        if route != "/api/history (day)":  # the page's one big fetch, ~10 MB for 200 PCs
            worst = max(worst, p99)
        print(f"| {route} | {len(xs)} | {p50:.1f} ms | {p99:.1f} ms | {xs[-1] * 1e3:.1f} ms | {p99 / 100:.2f}× |")
    print(f"| memory | rss after apply {rss_start / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB | "
          f"grew {(peak - rss_start) / 1024:.1f} MiB | rings {rings / 1024:.1f} MiB | | "
          f"{(peak - rss_start) / rings:.2f}× the rings |")
    print(f"bench-dashboard: events delivered per stream: min {min(events_seen)}, max {max(events_seen)}")
    for f in failures:
        print(f"bench-dashboard: FAILED: {f}")
    ok = not failures and lat["reset"] and worst < 100 and (peak - rss_start) <= rings and min(events_seen) > 0
    print(f"bench-dashboard: {'within' if ok else 'OUTSIDE'} the targets (p99 < 100 ms for the page's "
          f"periodic requests and resets; memory growth <= the rings' cost; every stream got events)")
    sys.exit(0 if ok else 1)


main()
