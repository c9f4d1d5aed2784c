"""A materialized storage dir for the service's tests, and the service itself as a real process."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from wb_pipeline.sample_data import SampleSpec, write_sample

REPO_ROOT = Path(__file__).resolve().parents[2]


# Large enough for classifiers of several labels (the 160-product sample trains none: too few rows per class).
SERVED_SAMPLE = SampleSpec(n_products=600, seed=11)


@pytest.fixture(scope="session")
def served_run(shared_models_dir, tmp_path_factory):
    """`full_pipeline` on a 600-product generated sample with the REAL default encoders (e5 int8,
    EfficientNet-Lite0): its storage dir, raw dir and Dagster instance home (materialized once per session)."""
    from wb_pipeline.definitions import build_definitions

    root = tmp_path_factory.mktemp("served_run")
    small_sample_dir = root / "raw"
    write_sample(small_sample_dir, SERVED_SAMPLE)
    (root / "home").mkdir()
    defs = build_definitions(
        raw_dir=str(small_sample_dir),
        storage_dir=str(root / "storage"),
        incoming_dir=str(root / "incoming"),
        models_dir=str(shared_models_dir),
    )
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        result = defs.resolve_job_def("full_pipeline").execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
        yield {
            "defs": defs,
            "instance": instance,
            "result": result,
            "root": root,
            "storage": root / "storage",
            "models": shared_models_dir,
            "raw": small_sample_dir,
            "home": root / "home",
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`python -m wb_pipeline.serve` in a subprocess on a free loopback port."""

    def __init__(self, storage: Path, models: Path, tmp: Path, home: Path | None = None, max_upload: int = 2_000_000):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "WB_PIPELINE_STORAGE_DIR": str(storage),
            "WB_PIPELINE_MODELS_DIR": str(models),
            "WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES": str(max_upload),
            "TMPDIR": str(tmp),  # whatever the service would spool to disk lands here (the tests check it)
        }
        if home is not None:
            env["DAGSTER_HOME"] = str(home)
        else:
            env.pop("DAGSTER_HOME", None)
        self.log = (tmp.parent / f"serve-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wb_pipeline.serve", "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_up(self, timeout: float = 300) -> None:
        """Until the port answers (200 or 503 from /health)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the service exited: {self.log_text()[-2000:]}"
            try:
                self.get("/health")
                return
            except (ConnectionError, urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"the service did not start: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON body) of one request."""
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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


def multipart(fields: dict, photo: bytes | None = None, photo_type: str = "image/jpeg") -> tuple[bytes, str]:
    """A multipart/form-data body (text fields + an optional `photo` file) and its content type."""
    boundary = "----wbpipelinetestboundary7d93"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + str(value).encode()
            + b"\r\n"
        )
    if photo is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="photo.jpg"\r\n'
            f"Content-Type: {photo_type}\r\n\r\n".encode()
            + photo
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def service(served_run, tmp_path_factory):
    """The service over `served_run`'s storage (upload limit 2 MB), up and serving."""
    tmp = tmp_path_factory.mktemp("service") / "tmp"
    running = Service(served_run["storage"], served_run["models"], tmp, served_run["home"])
    try:
        running.wait_up()
        deadline = time.monotonic() + 300
        while running.get("/health")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert running.get("/health")[0] == 200, running.log_text()[-3000:]
        yield running
    finally:
        running.stop()
