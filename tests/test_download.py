"""The download path against a real HTTP server on 127.0.0.1: success, retries, wrong MD5, truncated body, 404,
nothing listening; and the source order (present file, mirror, download). Never a partial file left behind."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import shared_file
from medmnist_pipeline import metadata
from medmnist_pipeline.config.params import DataParams
from medmnist_pipeline.data.dataset import Limits, download, fetch
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import md5sum

PAYLOAD = b"MedMNIST bytes " * 4000
LIMIT = Limits(max_bytes=10 * len(PAYLOAD), min_rate=1024, grace_s=5)


class Server:
    """Serves ``files`` by path; ``/flaky/...`` fails with 503 once; ``/truncated/...`` lies about its length."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests, self.flaky_left = files, [], 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests.append(self.path)
                path = self.path.split("?")[0]
                if path.startswith("/flaky/") and outer.flaky_left:
                    outer.flaky_left -= 1
                    self.send_error(503, "try later")
                    return
                if path.startswith(("/trickle/", "/endless/", "/huge/")):
                    outer.hostile(self, path.split("/")[1])
                    return
                body = outer.files.get(path.removeprefix("/flaky").removeprefix("/truncated"))
                if body is None:
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path.startswith("/truncated/") else body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hostile(self, handler: BaseHTTPRequestHandler, kind: str) -> None:
        """``trickle``: 1 byte every 0.2 s; ``endless``: no length, bytes until the client leaves; ``huge``: a 1 TB
        Content-Length."""
        handler.send_response(200)
        if kind != "endless":
            handler.send_header("Content-Length", str(10**12 if kind == "huge" else len(PAYLOAD)))
        handler.end_headers()
        try:
            while True:
                handler.wfile.write(b"x" if kind == "trickle" else b"x" * 65536)
                handler.wfile.flush()
                if kind == "trickle":
                    time.sleep(0.2)
        except OSError:  # the client hung up, as it should
            pass


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server({"/pneumoniamnist.npz": PAYLOAD})
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def payload_md5(tmp_path: Path) -> str:
    (tmp_path / "payload").write_bytes(PAYLOAD)
    return md5sum(tmp_path / "payload")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_success_writes_the_verified_file_only(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "pneumoniamnist.npz"
    download(
        f"{server.url}/pneumoniamnist.npz?download=1", target, payload_md5(tmp_path), 5, 0, 0, limit=LIMIT, log=print
    )
    assert target.read_bytes() == PAYLOAD
    assert leftovers(target.parent) == ["pneumoniamnist.npz"]


def test_server_error_is_retried(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    download(f"{server.url}/flaky/pneumoniamnist.npz", target, payload_md5(tmp_path), 5, 2, 0, limit=LIMIT, log=print)
    assert target.read_bytes() == PAYLOAD
    assert server.requests == ["/flaky/pneumoniamnist.npz"] * 2


def test_wrong_md5_discards_the_file_and_shows_both_digests(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    with pytest.raises(PipelineError) as error:
        download(f"{server.url}/pneumoniamnist.npz", target, "0" * 32, 5, 0, 0, limit=LIMIT, log=print)
    assert f"expected {'0' * 32}, got {payload_md5(tmp_path)}" in str(error.value)
    assert leftovers(target.parent) == []


def test_truncated_body_fails_after_retries_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    with pytest.raises(PipelineError, match=r"could not download .*/truncated/pneumoniamnist.npz \(3 attempts"):
        download(
            f"{server.url}/truncated/pneumoniamnist.npz", target, payload_md5(tmp_path), 5, 2, 0, limit=LIMIT, log=print
        )
    assert len(server.requests) == 3
    assert leftovers(target.parent) == []


def test_404_is_not_retried_and_says_how_to_work_offline(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "absent.npz"
    with pytest.raises(PipelineError) as error:
        download(f"{server.url}/absent.npz", target, "0" * 32, 5, 3, 0, limit=LIMIT, log=print)
    message = str(error.value)
    assert f"{server.url}/absent.npz: HTTP 404" in message
    assert f"place the official file at {target}" in message and "MEDMNIST_MIRROR" in message
    assert server.requests == ["/absent.npz"]
    assert leftovers(target.parent) == []


def test_nothing_listening_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago, with nobody listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/pneumoniamnist.npz"
    with pytest.raises(PipelineError, match=rf"could not download {url} \(2 attempts; last error: .*refused"):
        download(url, tmp_path / "raw" / "x.npz", "0" * 32, 5, 1, 0, limit=LIMIT, log=print)
    assert leftovers(tmp_path / "raw") == []


# --- the source order in fetch() with the real official files ----------------------------------------------


def data_params(mirror: Path | None = None, flag: str = "breastmnist") -> DataParams:
    return DataParams.model_validate(
        {
            "flag": flag,
            "size": 28,
            "mirror": str(mirror) if mirror else None,
            "download": {"timeout_s": 5, "retries": 0, "backoff_s": 0},
            "custom": {"path": None, "task": None, "labels": None},
        }
    )


@pytest.fixture
def official_via_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The official URL pattern pointed at a local server holding the real BreastMNIST file."""
    s = Server({"/breastmnist.npz": shared_file("breastmnist.npz").read_bytes()})
    monkeypatch.setattr(metadata, "ZENODO_URL", s.url + "/{flag}{suffix}.npz?download=1")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_fetch_downloads_the_official_file(official_via_http: Server, tmp_path: Path) -> None:
    path, md5 = fetch(data_params(), tmp_path / "raw", log=print)
    assert md5 == metadata.DATASETS["breastmnist"].md5[28] == md5sum(path)
    assert official_via_http.requests == ["/breastmnist.npz?download=1"]


def test_fetch_uses_a_present_file_without_network(official_via_http: Server, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "breastmnist.npz").write_bytes(shared_file("breastmnist.npz").read_bytes())
    fetch(data_params(), raw, log=print)
    assert official_via_http.requests == []


def test_fetch_replaces_a_corrupt_present_file_from_the_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "breastmnist.npz").write_bytes(b"corrupt")
    monkeypatch.setenv("MEDMNIST_MIRROR", str(shared_file("breastmnist.npz").parent))
    path, md5 = fetch(data_params(mirror=tmp_path / "ignored-because-env-wins"), raw, log=print)
    assert md5sum(path) == metadata.DATASETS["breastmnist"].md5[28]


def test_mirror_file_with_wrong_md5_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "breastmnist.npz").write_bytes(b"not the official file")
    with pytest.raises(PipelineError, match=r"mirror/breastmnist.npz: MD5 mismatch: expected 750601b1"):
        fetch(data_params(mirror=mirror), tmp_path / "raw", log=print)
    assert leftovers(tmp_path / "raw") == []


# --- hostile servers: bounded by the official file's size and a minimum rate -------------------------------


def test_trickling_server_is_abandoned_after_the_grace_period(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    limit = Limits(max_bytes=10 * len(PAYLOAD), min_rate=1024, grace_s=1.0)
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"could not download .*too slow"):
        download(f"{server.url}/trickle/x.npz", target, "0" * 32, 3, 0, 0, limit=limit, log=print)
    assert time.monotonic() - started < 4  # a 3 s socket timeout alone never fires: a byte comes every 0.2 s
    assert leftovers(target.parent) == []


def test_body_without_length_is_cut_at_the_size_cap(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    limit = Limits(max_bytes=1 << 20, min_rate=1024, grace_s=5)
    with pytest.raises(PipelineError, match=r"sent more than 1048576 bytes"):
        download(f"{server.url}/endless/x.npz", target, "0" * 32, 5, 2, 0, limit=limit, log=print)
    assert len(server.requests) == 1  # not retried: the file is not the official one
    assert leftovers(target.parent) == []


def test_announced_size_over_the_cap_is_refused_before_reading(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "x.npz"
    with pytest.raises(PipelineError, match=r"announces 1000000000000 bytes"):
        download(f"{server.url}/huge/x.npz", target, "0" * 32, 5, 0, 0, limit=LIMIT, log=print)
    assert leftovers(target.parent) == []


def test_official_size_bound_holds_the_real_files() -> None:
    for flag in ("breastmnist", "pneumoniamnist"):
        size = shared_file(f"{flag}.npz").stat().st_size
        assert size < metadata.DATASETS[flag].max_file_bytes(28) < 4 * size


def test_retry_message_keeps_half_seconds(server: Server, tmp_path: Path) -> None:
    lines: list[str] = []
    server.flaky_left = 1
    target = tmp_path / "raw" / "x.npz"
    download(
        f"{server.url}/flaky/pneumoniamnist.npz",
        target,
        payload_md5(tmp_path),
        5,
        1,
        0.5,
        limit=LIMIT,
        log=lines.append,
    )
    assert lines[0].startswith("retry 1/1 in 0.5 s (HTTP Error 503")


@contextmanager
def as_nobody() -> Iterator[None]:
    """Root reads any file whatever its permission bits: act as nobody (effective uid only, so it can go back)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_mirror_file_is_a_clear_error() -> None:
    # pytest's own temporary folders are private to root: nobody could not reach inside them
    with tempfile.TemporaryDirectory() as folder:
        unreadable_mirror(Path(folder))


def unreadable_mirror(tmp_path: Path) -> None:
    mirror, raw = tmp_path / "mirror", tmp_path / "raw"
    mirror.mkdir()
    raw.mkdir()
    (mirror / "breastmnist.npz").write_bytes(shared_file("breastmnist.npz").read_bytes())
    (mirror / "breastmnist.npz").chmod(0)
    for folder in (tmp_path, raw, mirror):
        folder.chmod(0o777)
    with as_nobody(), pytest.raises(PipelineError) as error:
        fetch(data_params(mirror=mirror), raw, log=print)
    assert str(error.value) == f"{mirror / 'breastmnist.npz'}: permission denied; make it readable, or unset the mirror"
    assert leftovers(raw) == []
