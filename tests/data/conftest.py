"""Fixtures for the data-layer tests: the shared real files, Debian's
Fashion-MNIST, an isolated data root and a local HTTP file server."""

from __future__ import annotations

import dataclasses
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from discrete_vi.data import SOURCES

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CUT_PREFIX = "/cut/"  # the test server closes these downloads halfway


def running_under_ci() -> bool:
    """True when the environment variable CI is set to 1, true or yes (any case)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _required_folder(folder: Path, missing_message: str) -> Path:
    """``folder`` if it exists; otherwise the test is skipped, or fails under CI (which provides it)."""
    if not folder.is_dir():
        if running_under_ci():
            pytest.fail(f"{missing_message} (CI provides it)")
        pytest.skip(missing_message)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository root (real MNIST and binarized MNIST);
    skipped if absent, but a failure under CI."""
    return _required_folder(SHARED_DATA, f"shared test data not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Debian's Fashion-MNIST folder; skipped if absent, but a failure under CI."""
    return _required_folder(
        DEBIAN_FASHION_MNIST, f"{DEBIAN_FASHION_MNIST} not found: apt-get install -y dataset-fashion-mnist"
    )


@pytest.fixture
def fashion_mnist_system_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder, not yet created, that replaces Debian's as Fashion-MNIST's system folder."""
    folder = tmp_path / "system_fashion_mnist"
    source = dataclasses.replace(SOURCES["fashion_mnist"], system_folders=(folder,))
    monkeypatch.setitem(SOURCES, "fashion_mnist", source)
    return folder


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root that the default root points to, so no test touches the user's cache."""
    root = tmp_path / "data_root"
    monkeypatch.setenv("DISCRETE_VI_DATA", str(root))
    return root


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; for ``/cut/<name>`` announces the full length but closes halfway."""

    def do_GET(self) -> None:
        if not self.path.startswith(CUT_PREFIX):
            super().do_GET()
            return
        content = (Path(self.directory) / self.path[len(CUT_PREFIX) :]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class FileServer:
    """A folder served over HTTP: ``url + name`` serves ``folder / name`` whole,
    ``cut_url + name`` announces its full length but closes the connection halfway."""

    folder: Path
    url: str
    cut_url: str


@pytest.fixture
def file_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local HTTP server on 127.0.0.1 in a thread, serving an empty tmp folder.
    Requests to it bypass any HTTP proxy set in the environment."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    handler = lambda *args, **kwargs: _FileHandler(*args, directory=str(folder), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield FileServer(folder, url + "/", url + CUT_PREFIX)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
