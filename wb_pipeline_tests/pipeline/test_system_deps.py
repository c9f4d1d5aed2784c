"""`.ci/system-deps` (what `make system-deps` runs): each branch, with `dpkg-query`, `id`, `sudo` and
`apt-get` replaced by stubs on PATH, so the test never installs anything and does not depend on who runs it."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "system-deps"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def run_script(
    tmp_path: Path, *, uid: int, sudo_works: bool, installed: set[str], packages: list[str], dry_run: bool = False
) -> subprocess.CompletedProcess:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    cases = " ".join(installed) or "none"
    _stub(
        stubs,
        "dpkg-query",
        f'for p in {cases}; do [ "$p" = "$3" ] && {{ printf "install ok installed"; exit 0; }}; done; exit 1',
    )
    _stub(stubs, "id", f"echo {uid}")
    _stub(
        stubs,
        "sudo",
        'if [ "$1" = "-n" ]; then exit ' + ("0" if sudo_works else "1") + "; fi; "
        f'echo "sudo $*" >> {tmp_path}/calls; exec "$@"',
    )
    _stub(stubs, "apt-get", f'echo "apt-get $*" >> {tmp_path}/calls')
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"}
    env.pop("SYSTEM_DEPS_DRY_RUN", None)
    if dry_run:
        env["SYSTEM_DEPS_DRY_RUN"] = "1"
    return subprocess.run(["bash", str(SCRIPT), *packages], capture_output=True, text=True, env=env, timeout=60)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_nothing_to_do_when_everything_is_installed(tmp_path):
    done = run_script(
        tmp_path, uid=1000, sudo_works=False, installed={"chromium", "postgresql"}, packages=["chromium", "postgresql"]
    )
    assert done.returncode == 0 and done.stdout == "" and calls(tmp_path) == []


def test_root_installs_only_the_missing_packages(tmp_path):
    done = run_script(tmp_path, uid=0, sudo_works=False, installed={"chromium"}, packages=["chromium", "postgresql"])
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path) == ["apt-get update -q", "apt-get install -y -q --no-install-recommends postgresql"]


def test_passwordless_sudo_is_used_when_not_root(tmp_path):
    done = run_script(tmp_path, uid=1000, sudo_works=True, installed=set(), packages=["chromium-driver"])
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path)[0].startswith("sudo sh -c apt-get update -q && ")
    assert calls(tmp_path)[-1] == "apt-get install -y -q --no-install-recommends chromium-driver"


def test_without_root_or_sudo_it_stops_at_once_with_the_exact_command(tmp_path):
    done = run_script(
        tmp_path,
        uid=1000,
        sudo_works=False,
        installed={"postgresql"},
        packages=["chromium", "chromium-driver", "postgresql"],
    )
    assert done.returncode == 1
    assert calls(tmp_path) == []
    assert "missing Debian packages: chromium chromium-driver." in done.stderr
    assert (
        "sudo sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "--no-install-recommends chromium chromium-driver'"
    ) in done.stderr


@pytest.mark.parametrize("uid", [0, 1000])
def test_dry_run_prints_and_installs_nothing(tmp_path, uid):
    done = run_script(tmp_path, uid=uid, sudo_works=True, installed=set(), packages=["chromium"], dry_run=True)
    assert done.returncode == 0
    assert "installing the missing Debian packages chromium" in done.stdout and "dry run" in done.stdout
    assert calls(tmp_path) == []
