"""Helpers for the browser test of the Dagster UI: a `dagster dev` server on a private instance and a
headless Chromium driven by Selenium.

Offline by construction: the system Chromium and chromedriver are used by path and Selenium Manager
is told not to download anything (a missing binary is an error naming it, never a skip).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "ui"
# Tall enough that a group's lineage graph shows all its assets beside the links to the assets
# downstream of it (at 1,000 px the ingestion graph pushed raw_products_train out of view once the
# search group's duplicate_groups / duplicate_report also read image_index).
WINDOW_SIZE = (1600, 1600)
# Everything that could reach the network is off: the test must pass on an offline machine.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers have a tiny /dev/shm
)
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
# `dagster dev` shuts down on SIGINT/SIGTERM, but maps SIGTERM to whatever SIGINT does, and a child
# of a background job inherits SIGINT *ignored*: it would then ignore both. Start it through a
# Python that installs a SIGINT handler and execs (a handled signal becomes the default on exec).
_EXEC_WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def find_executable(names: Iterable[str], what: str) -> str:
    """Path of the first of `names` on PATH; a clear error naming the package when none is there."""
    names = list(names)
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(
        f"{what} not found on PATH (looked for {', '.join(names)}); "
        f"install the Debian packages `chromium` and `chromium-driver`"
    )


def chromium_driver(user_data_dir: Path, window_size: tuple[int, int] = WINDOW_SIZE) -> WebDriver:
    """A headless Chromium controlled through the system chromedriver, with a fresh profile in
    `user_data_dir`. Selenium Manager is kept offline (`SE_OFFLINE`), so nothing is downloaded."""
    options = webdriver.ChromeOptions()
    options.binary_location = find_executable(["chromium", "chromium-browser"], "Chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
    service = Service(executable_path=find_executable(["chromedriver"], "chromedriver"))
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # read by Selenium Manager while the driver starts
    try:
        driver = webdriver.Chrome(service=service, options=options)
    finally:
        if previous is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = previous
    driver.set_page_load_timeout(90)
    return driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterDevServer:
    """`dagster dev` (webserver + daemon: the instance queues runs, so the daemon must dequeue them)
    in its own process group, logging to `log_path`. Use as a context manager: the whole group is
    terminated on exit, killed if it does not stop in time."""

    def __init__(self, workspace: Path, env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        dagster = Path(sys.executable).parent / "dagster"
        if not dagster.exists():
            raise RuntimeError(f"the `dagster` command is not installed next to {sys.executable}")
        self._command = [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(self.port)]
        self._env = env
        self._cwd = cwd
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> DagsterDevServer:
        command = [sys.executable, "-c", _EXEC_WITH_SIGINT, *self._command]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, env=self._env, cwd=self._cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to `dagster dev` (it stops its webserver, daemon and code server), then SIGKILL to
        whatever is left of its process group after `grace_s` (or at once if it already exited)."""
        process = self._process
        if process is None:
            return
        group = process.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        process.wait(timeout=grace_s)
        self._process = None

    def log_tail(self, n_chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-n_chars:]

    def _check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"`{' '.join(self._command)}` exited early; log:\n{self.log_tail()}")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """POST one GraphQL query to the webserver; returns `data` (errors raise)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until `GET /server_info` answers and every code location has loaded without error."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.url}/server_info did not answer in {timeout_s:.0f} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.5)
        query = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        while True:
            self._check_alive()
            entries = self.graphql(query)["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise RuntimeError(f"code location failed to load: {errors}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"code locations not loaded in {timeout_s:.0f} s: {entries}")
            time.sleep(0.5)

    def runs(self) -> list[dict]:
        """Every run of the instance: id, status and the asset keys it targets."""
        query = """{ runsOrError { __typename ... on Runs { results {
            runId status assetSelection { path } } } ... on PythonError { message } } }"""
        answer = self.graphql(query)["runsOrError"]
        if answer["__typename"] != "Runs":
            raise RuntimeError(f"listing runs failed: {answer}")
        return answer["results"]


def body_lines(driver: WebDriver) -> set[str]:
    """The visible text of the page, one entry per line (exact names, not substrings)."""
    return {line.strip() for line in driver.find_element(By.TAG_NAME, "body").text.splitlines()}


def wait_for_lines(driver: WebDriver, expected: Iterable[str], timeout_s: float, what: str) -> None:
    """Until every string of `expected` is a whole line of the page's text; a clear error listing the
    missing ones otherwise."""
    expected = set(expected)
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(lambda d: expected <= body_lines(d))
    except TimeoutException:
        missing = sorted(expected - body_lines(driver))
        raise AssertionError(f"{what}: not shown after {timeout_s:.0f} s: {missing} ({driver.current_url})") from None


def wait_for_graph_nodes(
    driver: WebDriver, names: Iterable[str], timeout_s: float, what: str, max_zoom_outs: int = 8
) -> None:
    """Until every asset of `names` has been drawn in the lineage graph on screen. The graph renders only
    the nodes inside its viewport, so when some stay missing this zooms out (the graph's own zoom-out
    button) and looks again; a clear error listing the ones never drawn otherwise."""
    names, seen = set(names), set()
    try:  # the graph's first render
        WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(lambda d: names & body_lines(d))
    except TimeoutException:
        raise AssertionError(f"{what}: no node drawn after {timeout_s:.0f} s ({driver.current_url})") from None
    for _ in range(max_zoom_outs + 1):
        try:
            WebDriverWait(driver, 5, poll_frequency=0.5).until(lambda d: names <= seen.union(body_lines(d) & names))
        except TimeoutException:
            pass
        seen |= body_lines(driver) & names
        if names <= seen:
            return
        driver.find_element(By.XPATH, "//button[.//*[@aria-label='zoom_out']]").click()
    raise AssertionError(f"{what}: never drawn, even zoomed out: {sorted(names - seen)} ({driver.current_url})")


def dismiss_community_dialog(driver: WebDriver, server: DagsterDevServer, timeout_s: float = 60.0) -> bool:
    """Click "Skip" on the "Join the Dagster community" dialog that a fresh instance shows over the
    first page it serves. The server says whether it will show it (`shouldShowNux`), so no time is
    spent waiting for a dialog that will not come. Returns whether it was dismissed."""
    if not server.graphql("{ shouldShowNux }")["shouldShowNux"]:
        return False
    skip = "//button[normalize-space()='Skip']"
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(
            lambda d: (
                "Join the Dagster community" in d.find_element(By.TAG_NAME, "body").text
                and d.find_elements(By.XPATH, skip)
            )
        )
    except TimeoutException:
        raise AssertionError(f"the server expects the community dialog, none shown after {timeout_s:.0f} s") from None
    driver.find_element(By.XPATH, skip).click()
    WebDriverWait(driver, 15).until(lambda d: not d.find_elements(By.XPATH, skip))
    return True


_SCROLLER_JS = """
const link = document.querySelector('a[href^="/assets/"]');
let node = link && link.parentElement;
while (node) {
  const style = getComputedStyle(node);
  if ((style.overflowY === 'auto' || style.overflowY === 'scroll') && node.scrollHeight > node.clientHeight) return node;
  node = node.parentElement;
}
return null;
"""


def catalog_asset_names(driver: WebDriver) -> set[str]:
    """Names of every asset in the (virtualised) asset catalog list: scrolls its container top to
    bottom, collecting the asset links rendered at each position."""

    def visible() -> set[str]:
        names = set()
        for link in driver.find_elements(By.CSS_SELECTOR, 'a[href^="/assets/"]'):
            with contextlib.suppress(WebDriverException):  # a row re-rendered while reading it
                if link.text.strip():
                    names.add(link.text.strip())
        return names

    names = visible()
    scroller = driver.execute_script(_SCROLLER_JS)
    if scroller is None:  # everything fits on screen
        return names
    driver.execute_script("arguments[0].scrollTop = 0", scroller)
    while True:
        time.sleep(0.2)  # let the virtual list render the rows at the new position
        names |= visible()
        at_bottom = driver.execute_script(
            "const s = arguments[0]; return s.scrollTop + s.clientHeight >= s.scrollHeight - 1", scroller
        )
        if at_bottom:
            break
        driver.execute_script("arguments[0].scrollTop += arguments[0].clientHeight / 2", scroller)
    driver.execute_script("arguments[0].scrollTop = 0", scroller)
    return names


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save a PNG of the current page as `test-artifacts/ui/<name>.png` and print its path."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@contextlib.contextmanager
def failure_artifacts(driver: WebDriver, name: str, server: DagsterDevServer | None = None) -> Iterator[None]:
    """On an exception inside the block: save a screenshot, the page source and the server log as
    `test-artifacts/ui/FAILED-<name>.*` (paths printed), then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(driver, f"FAILED-{name}")
            source = ARTIFACTS_DIR / f"FAILED-{name}.html"
            source.write_text(f"<!-- {driver.current_url} -->\n{driver.page_source}")
            print(f"page source: {source}")
        if server is not None:
            with contextlib.suppress(Exception):
                log = ARTIFACTS_DIR / f"FAILED-{name}-server.log"
                shutil.copyfile(server.log_path, log)
                print(f"server log: {log}")
        raise
