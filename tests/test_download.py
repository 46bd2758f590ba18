"""Downloads against a loopback HTTP server: verify, resume, idempotence, corruption, offline."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from celltune.cli import app
from celltune.data.download import NEURIPS_ARCHIVES, download_neurips, extract_zip
from celltune.data.neurips import discover
from celltune.errors import ConfigError, DownloadError
from celltune.report.console import download_bar


class Server:
    """Serves ``files`` by path; records (path, Range header) of each GET."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cut_after: int | None = None  # send only this many bytes, then hang up
        self.url = ""


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if state.cut_after is None else body[: state.cut_after])

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/files"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _tuning_zip() -> bytes:
    """A tiny Tuning.zip like Zenodo's: Tuning/images/x.tif + Tuning/labels/x_label.tiff."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in [
            ("Tuning/images/cell_00001.tif", rng.integers(0, 65535, (32, 32), dtype=np.uint16)),
            ("Tuning/labels/cell_00001_label.tiff", np.eye(32, dtype=np.int16)),
        ]:
            img = io.BytesIO()
            tifffile.imwrite(img, arr)
            zf.writestr(name, img.getvalue())
    return buf.getvalue()


ZIP = _tuning_zip()
SHA = hashlib.sha256(ZIP).hexdigest()
ARCHIVES = {"tuning": ("Tuning.zip", SHA)}


class Bars:
    """A ProgressBar that records what it was opened with and how far it advanced."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int | None, int]] = []
        self.advanced = 0

    @contextmanager
    def __call__(self, name: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
        self.opened.append((name, total, done))

        def advance(n: int) -> None:
            self.advanced += n

        yield advance


def _get(server: Server, root: Path, **kw: object) -> list[Path]:
    kw.setdefault("progress", False)
    return download_neurips(root, ["tuning"], base_url=server.url, archives=ARCHIVES, **kw)


def test_download_verifies_extracts_and_is_idempotent(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    lines: list[str] = []
    bars = Bars()

    got = _get(server, tmp_path, progress=True, log=lines.append, bar=bars)

    assert got == [tmp_path / "Tuning.zip"]
    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP
    assert not (tmp_path / "Tuning.zip.incomplete").exists()
    assert server.requests == [("/files/Tuning.zip", None)]
    found = discover(tmp_path)
    assert [s.image.name for s in found.splits["tuning"]] == ["cell_00001.tif"]
    assert lines == [f"Tuning.zip: verified; extracting into {tmp_path}."]
    assert bars.opened == [("Tuning.zip", len(ZIP), 0)] and bars.advanced == len(ZIP)

    again = _get(server, tmp_path, progress=True, log=lines.append, bar=bars)
    assert again == got
    assert len(server.requests) == 1  # the second run made no request
    assert lines[-1] == "Tuning.zip: already downloaded and extracted."
    assert len(bars.opened) == 1


def test_progress_prints_status_lines_and_bar_to_stdout(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    _get(server, tmp_path, progress=True, bar=download_bar)
    out = capsys.readouterr().out
    assert f"Tuning.zip: verified; extracting into {tmp_path}.\n" in out
    assert "Tuning.zip" in out.split("verified")[0]  # the bar, named after the archive


def test_resume_from_partial_file(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    (tmp_path / "Tuning.zip.incomplete").write_bytes(ZIP[:1000])
    bars = Bars()

    _get(server, tmp_path, progress=True, log=lambda line: None, bar=bars)

    assert server.requests == [("/files/Tuning.zip", "bytes=1000-")]
    assert bars.opened == [("Tuning.zip", len(ZIP), 1000)] and bars.advanced == len(ZIP) - 1000
    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP
    assert (tmp_path / "Tuning" / "labels" / "cell_00001_label.tiff").is_file()


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    server.ignore_range = True
    (tmp_path / "Tuning.zip.incomplete").write_bytes(b"x" * 500)  # would corrupt if appended

    _get(server, tmp_path)

    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP


def test_complete_partial_file_answered_416(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    (tmp_path / "Tuning.zip.incomplete").write_bytes(ZIP)

    _get(server, tmp_path)

    assert server.requests == [("/files/Tuning.zip", f"bytes={len(ZIP)}-")]
    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP


def test_broken_transfer_keeps_partial_and_resumes(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    server.cut_after = 700
    with pytest.raises(DownloadError, match=r"broke off after 700 bytes.*rerun"):
        _get(server, tmp_path)
    assert (tmp_path / "Tuning.zip.incomplete").stat().st_size == 700

    server.cut_after = None
    _get(server, tmp_path)
    assert server.requests[-1] == ("/files/Tuning.zip", "bytes=700-")
    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP


def test_corrupted_download_is_rejected_and_deleted(server: Server, tmp_path: Path) -> None:
    bad = bytearray(ZIP)
    bad[len(bad) // 2] ^= 0xFF
    server.files["/files/Tuning.zip"] = bytes(bad)

    with pytest.raises(DownloadError, match=r"checksum mismatch.*deleted"):
        _get(server, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no archive, partial, marker or files


def test_bad_partial_is_deleted_so_a_rerun_succeeds(server: Server, tmp_path: Path) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    (tmp_path / "Tuning.zip.incomplete").write_bytes(b"\0" * 100)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        _get(server, tmp_path)
    assert not (tmp_path / "Tuning.zip.incomplete").exists()

    _get(server, tmp_path)
    assert (tmp_path / "Tuning.zip").read_bytes() == ZIP


def test_archive_placed_by_hand_is_used_without_a_request(server: Server, tmp_path: Path) -> None:
    (tmp_path / "Tuning.zip").write_bytes(ZIP)
    _get(server, tmp_path)
    assert server.requests == []
    assert (tmp_path / "Tuning" / "images" / "cell_00001.tif").is_file()


def test_unreachable_server_fails_quickly_with_advice(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/files"
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        download_neurips(tmp_path, ["tuning"], base_url=url, archives=ARCHIVES, progress=False)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert f"cannot reach 127.0.0.1:{port}" in message
    assert f"download the archives manually from {url} into {tmp_path} and rerun" in message


def test_http_error_is_reported(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        _get(server, tmp_path)


def test_zip_with_escaping_member_is_refused(server: Server, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Tuning/ok.txt", "fine")
        zf.writestr("../evil.txt", "escaped")
    data = buf.getvalue()
    server.files["/files/Evil.zip"] = data
    root = tmp_path / "root"
    archives = {"tuning": ("Evil.zip", hashlib.sha256(data).hexdigest())}

    with pytest.raises(DownloadError, match="outside"):
        download_neurips(root, ["tuning"], base_url=server.url, archives=archives, progress=False)

    assert not (tmp_path / "evil.txt").exists() and not (root / "Tuning").exists()
    assert not (root / ".Evil.zip.extracted").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(DownloadError, match="cannot be unzipped"):
        extract_zip(tmp_path / "x.zip", tmp_path)


def test_unknown_part_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="unknown part validation; valid parts are: training, tuning, testing"
    ):
        download_neurips(tmp_path, ["tuning", "validation"], progress=False)


def test_zenodo_archive_table() -> None:
    assert {k: v[0] for k, v in NEURIPS_ARCHIVES.items()} == {
        "training": "Training-labeled.zip",
        "tuning": "Tuning.zip",
        "testing": "Testing.zip",
    }
    assert all(len(sha) == 64 for _, sha in NEURIPS_ARCHIVES.values())


def test_cli_rejects_unknown_part(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "download", "neurips", str(tmp_path), "--parts", "bogus"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "valid parts are" in str(result.exception)


def test_cli_download_from_a_mirror(server: Server, tmp_path: Path, monkeypatch) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    monkeypatch.setitem(NEURIPS_ARCHIVES, "tuning", ("Tuning.zip", SHA))
    args = ["data", "download", "neurips", str(tmp_path), "--parts", "tuning"]
    result = CliRunner().invoke(app, [*args, "--base-url", server.url, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 archive(s) extracted" in result.output
    assert (tmp_path / "Tuning" / "images" / "cell_00001.tif").is_file()


def test_no_progress_prints_nothing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/files/Tuning.zip"] = ZIP
    lines: list[str] = []
    bars = Bars()
    _get(server, tmp_path, progress=False, log=lines.append, bar=bars)
    assert lines == [] and bars.opened == []
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "Tuning.zip").is_file()
