"""The package installs into a FRESH virtualenv - as the README says, and from the built wheel and
sdist - and publishes to a real gateway from there.

The README's way runs on a clean copy of sdk/python (the files a fresh clone has), so nothing
ignored (build/, *.egg-info, the repository's .venv) can make it pass. The wheel and sdist are
those in $SDK_ARTIFACTS (sdk/test.sh builds them with sdk/pack.sh); without it they are built
here. The three installs run side by side: each is mostly waiting on pip.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict

import pytest

from gateway import REPO

README = REPO / "sdk" / "README.md"
PLACEHOLDER = "/path/to/sse-gateway"
# The README's commands, run verbatim (PLACEHOLDER replaced by a clean copy of the repository).
README_VENV = "python3 -m venv .venv && . .venv/bin/activate"
README_INSTALL = f"pip install {PLACEHOLDER}/sdk/python"
INSTALL_TIMEOUT = 300

# Run by the fresh virtualenv's interpreter: publish with the environment's settings only.
SMOKE = r"""
import json, sys
import sse_gateway_sdk
from sse_gateway_sdk import Publisher
with Publisher() as pub:
    res = pub.publish_log(sys.argv[1], "wf1", {"installed_from": sys.argv[2]})
print(json.dumps({"ok": res.ok, "code": res.code, "message": res.message, "id": res.id,
                  "file": sse_gateway_sdk.__file__}))
"""


def sh(cmd: str, cwd: Path) -> str:
    """Runs a shell command line as a user types it; fails with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"`{cmd}` (in {cwd}) exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def clean_copy(folder: str, dest: Path) -> Path:
    """The files of `folder` a fresh clone has (tracked, plus new ones not ignored), under dest."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", folder],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))
    return dest


def readme_install(root: Path) -> Path:
    checkout = clean_copy("sdk/python", root / "sse-gateway")
    app = root / "my-service"
    app.mkdir()
    sh(f"{README_VENV}\n{README_INSTALL.replace(PLACEHOLDER, str(checkout))}", app)
    return app / ".venv"


def file_install(root: Path, package: Path) -> Path:
    # The virtualenv gets no pip of its own (the slowest part of making one): this test's pip
    # installs into it, from the file alone plus the dependencies from the package index.
    sh("python3 -m venv --without-pip .venv", root)
    sh(f"{shlex.quote(sys.executable)} -m pip --python .venv/bin/python install {shlex.quote(str(package))}", root)
    return root / ".venv"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    given = os.environ.get("SDK_ARTIFACTS")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("packages")
    subprocess.run(["bash", str(REPO / "sdk" / "pack.sh"), str(out), "python"], check=True, capture_output=True,
                   env={**os.environ, "SDK_PYTHON": sys.executable}, timeout=INSTALL_TIMEOUT)
    return out


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {[f.name for f in found]}"
    return found[0]


@pytest.fixture(scope="session")
def installs(tmp_path_factory, artifacts) -> Dict[str, "Future[Path]"]:
    """The fresh virtualenvs, installed concurrently: name -> future of the venv folder."""
    wheel = one(artifacts, "sse_gateway_sdk-*-py3-none-any.whl")
    sdist = one(artifacts, "sse_gateway_sdk-*.tar.gz")
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {
        "readme": pool.submit(readme_install, tmp_path_factory.mktemp("readme")),
        "wheel": pool.submit(file_install, tmp_path_factory.mktemp("wheel"), wheel),
        "sdist": pool.submit(file_install, tmp_path_factory.mktemp("sdist"), sdist),
    }
    yield futures
    pool.shutdown(wait=True)


def test_readme_states_the_commands_this_test_runs():
    text = README.read_text()
    assert README_VENV in text and README_INSTALL in text


def test_built_distributions_hold_the_whole_package(artifacts):
    import tarfile
    import zipfile

    names = set(zipfile.ZipFile(one(artifacts, "*.whl")).namelist())
    for f in ["__init__.py", "_publisher.py", "py.typed", "v1/__init__.py", "v1/gateway_pb2.py",
              "v1/gateway_pb2.pyi", "v1/gateway_pb2_grpc.py"]:
        assert f"sse_gateway_sdk/{f}" in names, f
    with tarfile.open(one(artifacts, "*.tar.gz")) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "src/sse_gateway_sdk/v1/gateway_pb2_grpc.py"} <= members
    assert not any(m.startswith("tests/") for m in members)


@pytest.mark.parametrize("how", ["readme", "wheel", "sdist"])
def test_fresh_install_publishes_to_a_real_gateway(how, installs, gateway, ws):
    venv = installs[how].result(timeout=INSTALL_TIMEOUT)
    python = venv / "bin" / "python"
    c = gateway.cert("l5-etl-service")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SSE_GATEWAY_"))}
    env.update(SSE_GATEWAY_ADDR=c["addr"], SSE_GATEWAY_CA=c["ca"], SSE_GATEWAY_CERT=c["cert"],
               SSE_GATEWAY_KEY=c["key"])
    channel = f"logs:{ws}:wf1"
    with gateway.sse([channel]) as s:
        proc = subprocess.run([str(python), "-c", SMOKE, ws, how], cwd=venv.parent, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["ok"], res
        # Imported from the fresh virtualenv, not from the repository.
        assert Path(res["file"]).resolve().is_relative_to(venv.resolve()), res["file"]
        assert "site-packages" in res["file"]
        e = s.next_event(channel)
    assert e["payload"] == {"installed_from": how} and e["event"] == "log" and e["id"] == res["id"]
