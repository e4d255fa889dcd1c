"""The soak run's driver; see scripts/soak, which builds the server and runs this."""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MODEL = "all-MiniLM-L6-v2"
# The words of new texts when the model's tokenizer is not at hand (INFERCACHE_MODEL_DIR
# unset); a random hex suffix then keeps each text new.
WORDS = ("cache tier model vector embedding disk memory redis request batch token query "
         "answer latency budget segment record index value shard epoch lease hit miss "
         "sentence semantic search document passage").split()
# Embeddings of all-MiniLM-L6-v2 as base64 little-endian f32: 384 x 4 bytes.
EMBEDDING_BASE64_CHARS = 4 * ((384 * 4 + 2) // 3)


def vocabulary(model_dir):
    """Whole-word tokens of the model's WordPiece vocabulary (tokenizer.json), so that a
    new text of n words is about n + 2 tokens: short texts make misses cheap enough for a
    2-core machine to fill a 256 MiB tier within the run. None without the file."""
    if not model_dir:
        return None
    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        return None
    vocab = json.loads(path.read_text())["model"]["vocab"]
    words = sorted(w for w in vocab if len(w) >= 3 and w.isascii() and w.isalpha())
    return words or None


def cpu_seconds(pid):
    """User + system CPU time of the process so far (/proc/PID/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_size(s):
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    low = s.strip().lower()
    for u, m in units.items():
        if low.endswith(u):
            return int(float(low[: -len(u)]) * m)
    return int(low)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid, field="VmRSS"):
    """The process's resident set (VmRSS), or one of its parts: RssAnon (heap and other
    anonymous memory), RssFile (mapped files: the binary's code)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except FileNotFoundError:
                pass
    return total


def get_json(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


class Load:
    """32 keep-alive connections sending random inputs: some repeated (hits), some new.
    Until the memory tier is full (`filling`) 10 % of the texts are repeated, after it
    60 %: the fill takes the model's whole throughput, the rest of the run is the mix."""

    def __init__(self, port, connections, deadline, seed, words):
        self.port = port
        self.deadline = deadline
        self.words = words
        self.filling = True
        self.lock = threading.Lock()
        self.pool = []
        self.sent = 0
        self.failed = 0
        self.errors = []
        self.outcomes = {}
        self.rng = random.Random(seed)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(connections)]

    def text(self, rng):
        # One of the last 20 000 texts sent (a hit unless evicted: 60 % once the memory
        # tier is full, 10 % while it fills), else a new one.
        repeated = 0.1 if self.filling else 0.6
        with self.lock:
            if self.pool and rng.random() < repeated:
                return rng.choice(self.pool[-20000:])
        if self.words:
            t = " ".join(rng.choice(self.words) for _ in range(rng.randint(2, 8)))
        else:
            t = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            t = f"{t} {rng.getrandbits(48):x}"
        with self.lock:
            self.pool.append(t)
            if len(self.pool) > 200000:
                del self.pool[:100000]
        return t

    def run(self, i):
        rng = random.Random(self.rng.random() + i)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while time.monotonic() < self.deadline:
            inputs = [self.text(rng) for _ in range(rng.randint(1, 8))]
            # base64: the client (on the same cores) parses no floats; every row is
            # checked for one whole embedding.
            body = json.dumps({"model": MODEL, "input": inputs, "encoding_format": "base64"})
            try:
                conn.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200
                if ok:
                    rows = json.loads(data)["data"]
                    ok = len(rows) == len(inputs) and all(
                        len(row["embedding"]) == EMBEDDING_BASE64_CHARS for row in rows)
                outcome = r.getheader("x-cache", "none")
                with self.lock:
                    self.sent += 1
                    self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                    if not ok:
                        self.failed += 1
                        if len(self.errors) < 20:
                            self.errors.append(f"{r.status}: {data[:200]!r}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.sent += 1
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--memory", default="256MiB")
    ap.add_argument("--disk-size", default="32MiB")
    ap.add_argument("--redis")
    ap.add_argument("--out", default="target/soak")
    ap.add_argument("--every", type=float, default=2,
                    help="seconds between samples (the accounting windows take their medians)")
    ap.add_argument("--warmup", type=float, default=30,
                    help="seconds before the accounting baseline (inference buffers, pools)")
    ap.add_argument("--window", type=float, default=30,
                    help="seconds of the baseline window, and the least time the memory tier "
                         "must be full before the end")
    ap.add_argument("--settle", type=float, default=10,
                    help="seconds after the memory tier is full before the end window starts")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    disk_dir = out / "disk"
    if disk_dir.exists():
        subprocess.run(["rm", "-rf", str(disk_dir)], check=True)
    memory = parse_size(a.memory)
    disk_size = parse_size(a.disk_size)
    port = free_port()
    cmd = [a.binary, "serve", "--bind", f"127.0.0.1:{port}", "--memory", a.memory,
           "--disk-dir", str(disk_dir), "--disk-size", a.disk_size]
    if a.redis:
        cmd += ["--redis", a.redis]
    model_dir = os.environ.get("INFERCACHE_MODEL_DIR")
    words = vocabulary(model_dir)
    log = open(out / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if get_json(port, "/readyz").get("status") == "ready":
                    break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit(f"the server exited: see {out / 'server.log'}")
            time.sleep(0.5)
        model_file = Path(model_dir) / "model.safetensors" if model_dir else None
        model_bytes = model_file.stat().st_size if model_file and model_file.exists() else 0
        baseline_rss = rss_bytes(server.pid)
        # VmHWM: the highest RSS the process has had, here its start-up (loading the model).
        ready_peak = rss_bytes(server.pid, "VmHWM")
        server_cpu0, client_cpu0 = cpu_seconds(server.pid), sum(os.times()[:2])

        start = time.monotonic()
        load = Load(port, a.connections, start + a.duration, a.seed, words)
        for t in load.threads:
            t.start()
        samples = []
        prev = None
        fill_t = None
        while True:
            now = time.monotonic()
            stats = get_json(port, "/v1/cache/stats")
            m = stats["models"].get(MODEL, {})
            hits, misses = m.get("hits", 0), m.get("misses", 0)
            rate = None
            if prev and (hits + misses) - (prev[0] + prev[1]) > 0:
                rate = (hits - prev[0]) / ((hits + misses) - (prev[0] + prev[1]))
            prev = (hits, misses)
            tiers = stats["tiers"]
            with load.lock:
                sent, failed = load.sent, load.failed
            sample = {
                "t": round(now - start, 1),
                "rss": rss_bytes(server.pid),
                "rss_anon": rss_bytes(server.pid, "RssAnon"),
                "rss_file": rss_bytes(server.pid, "RssFile"),
                "hit_rate": rate,
                "memory_bytes": tiers["memory"]["bytes"],
                "memory_entries": tiers["memory"]["entries"],
                "disk_bytes": tiers["disk"]["bytes"],
                "disk_entries": tiers["disk"]["entries"],
                "disk_index_bytes": tiers["disk"].get("index_bytes", 0),
                "memory_reserved_bytes": tiers["memory"].get("reserved_bytes", 0),
                "disk_files": dir_bytes(disk_dir / "segments"),
                "disk_dir": dir_bytes(disk_dir),
                "requests": sent,
                "failed": failed,
                "evictions": tiers["memory"]["evictions"],
            }
            samples.append(sample)
            # The memory tier is full once it holds 98 % of its budget less what it gives
            # to the disk tier's index (it evicts to stay under that); from then on the
            # load is the 60/40 mix.
            room = memory - sample["memory_reserved_bytes"]
            if fill_t is None and sample["memory_bytes"] >= 0.98 * room:
                fill_t = sample["t"]
                load.filling = False
            if now >= start + a.duration:
                break
            time.sleep(max(0.0, a.every - (time.monotonic() - now)))
        for t in load.threads:
            t.join()
        final = get_json(port, "/v1/cache/stats")
        run_peak = rss_bytes(server.pid, "VmHWM")
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        client_cpu = sum(os.times()[:2]) - client_cpu0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    peak_rss = max(s["rss"] for s in samples)
    rss_limit = (memory + model_bytes) * 1.15
    peak_disk = max(s["disk_dir"] for s in samples)
    last = samples[-1]
    disk_err = abs(last["disk_bytes"] - last["disk_files"]) / max(1, last["disk_files"])
    # The tiers' accounted memory against the process's: how much each grew from a window
    # after the warm-up (the model's buffers, thread pools and connections allocated, the
    # memory tier still mostly empty) to the samples after the memory tier is full: what
    # the memory tier charges plus what the disk tier's index holds. With a 256 MiB
    # budget the growth compared is about 200 MiB, so the few MiB one RSS sample moves with
    # the forward passes' buffers is ~1 % of it; each side is still a window's median,
    # and the spread is stated beside it.
    held = lambda s: s["memory_bytes"] + s["disk_index_bytes"]  # noqa: E731
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    first = [s for s in samples if a.warmup <= s["t"] < a.warmup + a.window] or samples[:1]
    end = [s for s in samples if fill_t is not None and s["t"] >= fill_t + a.settle]
    full_s = end[-1]["t"] - end[0]["t"] if end else 0.0
    tiers_full = fill_t is not None and full_s >= a.window
    # The baseline must precede the fill, or the growth compared is not the tier's fill.
    baseline_before_fill = fill_t is not None and first[-1]["t"] < fill_t
    end = end or samples[-1:]

    def growth(field, window=end):
        value = (lambda s: s[field]) if isinstance(field, str) else field
        return median([value(s) for s in window]) - median([value(s) for s in first])

    grown = growth("rss")
    grown_anon = growth("rss_anon")
    tier_grown = growth(held)
    mem_err = abs(tier_grown - grown) / max(1, tier_grown)
    anon_err = abs(tier_grown - grown_anon) / max(1, tier_grown)
    # The noise: how far one sample of RSS minus the tiers strays from its window's median
    # after the fill, as a share of the growth compared; and the drift of RSS minus the
    # tiers from the first to the last `window` seconds after the fill (a leak would show).
    rest = [s["rss"] - held(s) for s in end]
    spread = max(abs(r - median(rest)) for r in rest)
    early = [s["rss"] - held(s) for s in end if s["t"] < end[0]["t"] + a.window]
    late = [s["rss"] - held(s) for s in end if s["t"] > end[-1]["t"] - a.window]
    drift = median(late) - median(early)
    rates = [s["hit_rate"] for s in samples if s["hit_rate"] is not None]
    after_rates = [s["hit_rate"] for s in end if s["hit_rate"] is not None]
    m = final["models"].get(MODEL, {})
    checks = {
        "zero failed requests": load.failed == 0,
        f"peak RSS (VmHWM) <= (memory + model) x 1.15 = {rss_limit / 2**20:.1f} MiB":
            max(run_peak, peak_rss) <= rss_limit,
        f"disk <= disk_size = {disk_size / 2**20:.0f} MiB": peak_disk <= disk_size,
        "disk tier bytes within 5 % of its files": disk_err <= 0.05,
        f"memory tier full for at least {a.window:g} s before the end": tiers_full,
        "tiers' memory growth within 5 % of the process's RSS growth, warm-up to full":
            tiers_full and baseline_before_fill and mem_err <= 0.05,
    }
    summary = {
        "command": " ".join(["scripts/soak"] + sys.argv[3:]),
        "server": " ".join(cmd[1:]),
        "duration_s": a.duration,
        "connections": a.connections,
        "texts": "model vocabulary words, 2-8 a text" if words else "word list + hex suffix",
        "requests": load.sent,
        "failed": load.failed,
        "errors": load.errors,
        "outcomes": load.outcomes,
        "requests_per_s": round(load.sent / a.duration, 1),
        "server_cpu_s": round(server_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
        "hit_rate_overall": m.get("hit_rate"),
        "hit_rate_mean_interval": sum(rates) / len(rates) if rates else None,
        "hit_rate_mean_interval_after_fill": (sum(after_rates) / len(after_rates)
                                              if after_rates else None),
        "memory_tier_full_at_s": fill_t,
        "memory_tier_full_for_s": round(full_s, 1),
        "baseline_before_fill": baseline_before_fill,
        "memory_entries_at_end": last["memory_entries"],
        "baseline_rss_mib": round(baseline_rss / 2**20, 1),
        "peak_rss_until_ready_mib": round(ready_peak / 2**20, 1),
        "peak_rss_whole_run_vmhwm_mib": round(run_peak / 2**20, 1),
        "peak_rss_sampled_mib": round(peak_rss / 2**20, 1),
        "rss_limit_mib": round(rss_limit / 2**20, 1),
        "rss_after_fill_mib": [round(min(s["rss"] for s in end) / 2**20, 1),
                               round(max(s["rss"] for s in end) / 2**20, 1)],
        "model_mib": round(model_bytes / 2**20, 1),
        "memory_budget_mib": round(memory / 2**20, 1),
        "memory_tier_mib": round(last["memory_bytes"] / 2**20, 1),
        "accounting_windows_s": [[first[0]["t"], first[-1]["t"]], [end[0]["t"], end[-1]["t"]]],
        "rss_growth_mib": round(grown / 2**20, 1),
        "rss_anon_growth_mib": round(grown_anon / 2**20, 1),
        "memory_tier_growth_mib": round(growth("memory_bytes") / 2**20, 1),
        "disk_index_growth_mib": round(growth("disk_index_bytes") / 2**20, 1),
        "tiers_memory_growth_mib": round(tier_grown / 2**20, 1),
        "rss_minus_tiers_after_fill_mib": [round(min(rest) / 2**20, 1),
                                           round(max(rest) / 2**20, 1)],
        "rss_minus_tiers_drift_after_fill_mib": round(drift / 2**20, 1),
        "sample_noise_mib": round(spread / 2**20, 1),
        "sample_noise_share_of_growth": round(spread / max(1, tier_grown), 4),
        "rss_anon_mib_at_start_and_end": [round(samples[0]["rss_anon"] / 2**20, 1),
                                          round(last["rss_anon"] / 2**20, 1)],
        "rss_file_mib_at_start_and_end": [round(samples[0]["rss_file"] / 2**20, 1),
                                          round(last["rss_file"] / 2**20, 1)],
        "disk_index_mib": round(last["disk_index_bytes"] / 2**20, 1),
        "memory_reserved_mib": round(last["memory_reserved_bytes"] / 2**20, 1),
        "disk_entries_at_end": last["disk_entries"],
        "memory_accounting_error": round(mem_err, 4),
        "memory_accounting_error_rss_anon": round(anon_err, 4),
        "memory_evictions": last["evictions"],
        "disk_size_mib": round(disk_size / 2**20, 1),
        "peak_disk_mib": round(peak_disk / 2**20, 1),
        "disk_tier_mib": round(last["disk_bytes"] / 2**20, 1),
        "disk_files_mib": round(last["disk_files"] / 2**20, 1),
        "disk_accounting_error": round(disk_err, 4),
        "disk_evictions": final["tiers"]["disk"]["evictions"],
        "checks": checks,
    }
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ts = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(ts, [s["rss"] / 2**20 for s in samples], label="RSS")
    ax1.plot(ts, [(s["rss"] - held(s)) / 2**20 for s in samples],
             label="RSS - memory tier - disk index")
    ax1.plot(ts, [s["memory_bytes"] / 2**20 for s in samples], label="memory tier bytes")
    ax1.axhline(rss_limit / 2**20, color="red", linestyle="--", label="budget + model + 15 %")
    ax1.axhline(memory / 2**20, color="grey", linestyle=":", label="memory budget")
    ax1.set_ylabel("MiB")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"infercache soak: {a.connections} connections, {a.duration / 60:.0f} min, "
                  f"memory {a.memory}, disk {a.disk_size}" + (", Redis" if a.redis else ""))
    ax2.plot([t for t, s in zip(ts, samples) if s["hit_rate"] is not None],
             [100 * s["hit_rate"] for s in samples if s["hit_rate"] is not None], color="green")
    ax2.set_ylabel(f"hit rate per {a.every:g} s (%)")
    ax2.set_xlabel("minutes")
    ax2.set_ylim(0, 100)
    if fill_t is not None:
        for ax in (ax1, ax2):
            ax.axvline(fill_t / 60, color="black", linewidth=0.8, linestyle="-.")
        ax2.annotate("memory tier full", (fill_t / 60, 95), fontsize=8, ha="right")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)

    print(json.dumps(summary, indent=2))
    if not all(checks.values()):
        sys.exit("soak: a check failed: " + ", ".join(k for k, v in checks.items() if not v))


if __name__ == "__main__":
    main()
