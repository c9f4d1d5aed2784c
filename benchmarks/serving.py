"""Latency and throughput of the HTTP service (`make serve`) as a client sees it.

Usage::

    .venv/bin/python -m benchmarks.serving                  # the storage `make run` materialized
    .venv/bin/python -m benchmarks.serving --short          # fewer requests (CI)
    .venv/bin/python -m benchmarks.serving --storage DIR    # another materialized storage dir

A real server process (`ServiceProcess`: `python -m wb_pipeline.serve` on a free loopback port, the
storage's latest materialization, the default encoders; the serving tests start theirs with it too)
and a real HTTP client (the standard library's `http.client`, one keep-alive connection per client
thread). The cards are the catalogue's clean test products (their
title, description, brand, price and photo), sent in turn, so no two consecutive requests carry the
same card. Per scenario — `/predict` text only, `/predict` text + photo, `/similar` text + photo — at 1
and 16 concurrent clients: latency p50 / p99 (ms), requests per second, errors (any status but 200).
Then the server's peak RSS (`VmHWM`). Without a materialized storage (CI), the pipeline is first run on
a generated sample (600 products, `--short` 300: a smoke run, few labels train) into
`benchmarks/out/serving[-short]/` (models from `WB_PIPELINE_MODELS_DIR`, else the storage's). Never
passes or fails on a timing; written to `benchmarks/out/serving[-short].json`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.paths import MODELS_DIR
from wb_pipeline import settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
TARGET_P50_MS = 50.0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(fields: dict, photo: bytes | None = None, photo_type: str = "image/jpeg") -> tuple[bytes, str]:
    """A multipart/form-data body (text fields + an optional `photo` file) and its content type."""
    boundary = "----wbpipelineboundary7d93"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + str(value).encode()
        + b"\r\n"
        for name, value in fields.items()
    ]
    if photo is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="photo.jpg"\r\n'
            f"Content-Type: {photo_type}\r\n\r\n".encode()
            + photo
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class ServiceProcess:
    """`python -m wb_pipeline.serve` in a subprocess on a free loopback port (this benchmark, the serving
    tests: here because the package may not import the benchmarks, and tests may import both).

    `env`: variables to set (None removes one) over this process's environment; its output goes to
    `log` (a file; a temporary one by default), so a chatty service never blocks on a full pipe."""

    def __init__(self, env: dict | None = None, log=None, cwd=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = dict(os.environ)
        for name, value in (env or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = str(value)
        if log is None:
            handle, log = tempfile.mkstemp(prefix=f"serve-{self.port}-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wb_pipeline.serve", "--port", str(self.port)],
            cwd=cwd or ROOT,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float, statuses: Sequence[int] = (200,)) -> float:
        """Seconds until GET /health answers with one of `statuses`; RuntimeError (with the log's tail)
        when the service exits or `timeout` passes first."""
        started, answer = time.monotonic(), None
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited ({self.process.returncode}): {self.log_text()[-2000:]}")
            try:
                answer = self.get("/health")
                if answer[0] in statuses:
                    return time.monotonic() - started
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"no /health answer in {list(statuses)} within {timeout:.0f} s (the last: {answer}): "
            f"{self.log_text()[-2000:]}"
        )

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, the JSON body parsed, or its text when it is not JSON) of one request."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, payload.decode(errors="replace")

    def get(self, path: str):
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict, photo: bytes | None = None, photo_type: str = "image/jpeg"):
        body, content_type = multipart(fields, photo, photo_type)
        return self.request("POST", path, body, {"Content-Type": content_type})

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def peak_rss_mib(self) -> float | None:
        """The service's peak resident memory so far (Linux `VmHWM`), None where it cannot be read."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


def materialized(storage: str) -> bool:
    from wb_pipeline.core.serving.bundle import incomplete_reason, materialization_stamp

    layout = settings.layout(storage)
    return incomplete_reason(layout, materialization_stamp(layout)) is None


def materialize_sample(folder: Path, products: int) -> tuple[str, str]:
    """(raw dir, storage dir) of a `full_pipeline` run on a generated sample (the default encoders)."""
    import dagster as dg

    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.sample_data import SampleSpec, write_sample

    raw, storage = folder / "raw", folder / "storage"
    if not (raw / "wb_school_test.parquet").exists():
        write_sample(raw, SampleSpec(n_products=products, seed=7))
    if not materialized(str(storage)):
        (folder / "home").mkdir(parents=True, exist_ok=True)
        defs = build_definitions(raw_dir=str(raw), storage_dir=str(storage), models_dir=str(MODELS_DIR))
        with dg.instance_for_test(temp_dir=str(folder / "home")) as instance:
            result = defs.resolve_job_def("full_pipeline").execute_in_process(instance=instance)
            assert result.success
    return str(raw), str(storage)


def load_cards(storage: str, raw_dir: str, limit: int) -> list[tuple[dict, bytes]]:
    """(fields, photo bytes) of the clean test products (train ones when there are too few)."""
    import pandas as pd

    from wb_pipeline.core.data import schema
    from wb_pipeline.core.data import storage as store

    layout = settings.layout(storage)
    clean = store.read_parquet(
        layout.asset_file("clean_products"), ["nm", "split", "batch", "title", "description", "brand", "price"]
    )
    clean = pd.concat([clean[clean["split"] == "test"], clean[clean["split"] != "test"]])
    clean = clean[clean["batch"] == "main"].head(limit)
    cards = []
    with zipfile.ZipFile(Path(raw_dir) / schema.IMAGES_ZIP) as archive:
        for row in clean.itertuples():
            fields = {"title": row.title, "description": row.description}
            if isinstance(row.brand, str) and row.brand.strip():
                fields["brand"] = row.brand
            if pd.notna(row.price):
                fields["price"] = repr(float(row.price))
            cards.append(({k: v for k, v in fields.items() if isinstance(v, str)}, archive.read(f"{row.nm}.jpg")))
    return cards


def run_scenario(port: int, path: str, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict:
    """`requests` requests spread over `clients` threads (one keep-alive connection each)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            body, content_type = bodies[index % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
                status = response.status
            except OSError as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                status, payload = 0, str(error).encode()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append(f"{status}: {payload[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "path": path,
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
        "requests_per_s": len(latencies) / wall,
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="fewer requests (CI)")
    parser.add_argument("--storage", help="a materialized storage dir (default: the settings' storage dir)")
    parser.add_argument("--raw-dir", help="its WB folder, for the photos (default: the settings' raw dir)")
    args = parser.parse_args()
    # CI points these at the `make eval` run it just made instead of materializing a sample once more
    storage = args.storage or os.environ.get("BENCH_SERVING_STORAGE") or settings.storage_dir()
    raw_dir = args.raw_dir or os.environ.get("BENCH_SERVING_RAW_DIR") or settings.raw_dir()
    if not materialized(storage):
        print(f"{storage} holds no complete materialization: running the pipeline on a generated sample first")
        raw_dir, storage = materialize_sample(
            OUT / ("serving-short" if args.short else "serving"), 300 if args.short else 600
        )
    cards = load_cards(storage, raw_dir, 64 if args.short else 256)
    text_only = [(json.dumps(fields).encode(), "application/json") for fields, _ in cards]
    with_photo = [multipart(fields, photo) for fields, photo in cards]
    counts = {1: 30 if args.short else 200, 16: 64 if args.short else 400}
    server = ServiceProcess({settings.STORAGE_DIR_ENV: storage}, cwd=ROOT)
    rows = []
    try:
        startup_seconds = server.wait(900)  # /health 200: models loaded, warm-up done
        rss_after_start = server.peak_rss_mib()
        for name, path, bodies in (
            ("predict, text only", "/predict", text_only),
            ("predict, text + photo", "/predict", with_photo),
            ("similar, text + photo", "/similar", with_photo),
        ):
            run_scenario(server.port, path, bodies, 1, 5)  # warm the connection and the code path
            for clients, requests in counts.items():
                row = run_scenario(server.port, path, bodies, clients, requests)
                row["scenario"] = name
                rows.append(row)
                print(
                    f"{name:<24} {clients:>2} clients: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"{row['requests_per_s']:6.1f} req/s  errors {row['errors']}",
                    flush=True,
                )
        peak = server.peak_rss_mib()
    finally:
        server.stop()
    print()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; storage {storage}; {len(cards)} distinct cards")
    print(
        f"service start-up (models loaded, warm-up done): {startup_seconds:.1f} s; "
        f"peak RSS {peak:.0f} MiB (after start-up {rss_after_start:.0f} MiB)"
    )
    print()
    print("| endpoint | clients | p50 ms | p99 ms | requests/s | errors |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['scenario']} | {row['clients']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['requests_per_s']:.1f} | {row['errors']} |"
        )
    one = next(r for r in rows if r["scenario"] == "predict, text + photo" and r["clients"] == 1)
    print(f"\ntext + photo /predict at 1 client: p50 {one['p50_ms']:.1f} ms (target <= {TARGET_P50_MS:.0f} ms)")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"serving{'-short' if args.short else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": cpu_model(),
                "cores": os.cpu_count(),
                "storage": storage,
                "startup_seconds": startup_seconds,
                "peak_rss_mib": peak,
                "rows": rows,
            },
            indent=2,
        )
    )
    if any(r["errors"] for r in rows):
        print("errors:", [r["error_examples"] for r in rows if r["errors"]], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
