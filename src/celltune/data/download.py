"""Download the NeurIPS 2022 CellSeg archives from Zenodo: resumable, verified, idempotent.

Each archive streams to ``<name>.incomplete`` (resumed with an HTTP Range request when a
partial file exists), is checked against its SHA-256, renamed into place and unzipped into
the root. A ``.<name>.extracted`` marker makes a second run a no-op that touches no network.

Nothing here draws: status lines go to a ``log`` callable and the progress bar, if any, is
opened by a ``bar`` factory the caller passes (the CLI passes the terminal bar from
:mod:`celltune.report`).

Example:
    >>> download_neurips("data/neurips", parts=("training", "tuning"))  # doctest: +SKIP
    [PosixPath('data/neurips/Training-labeled.zip'), PosixPath('data/neurips/Tuning.zip')]
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any

from celltune import __version__
from celltune.errors import ConfigError, DownloadError
from celltune.io import write_text

ZENODO_URL = "https://zenodo.org/records/10719375/files"
#: part -> (archive file name, SHA-256), from Zenodo record 10719375.
NEURIPS_ARCHIVES: dict[str, tuple[str, str]] = {
    "training": (
        "Training-labeled.zip",
        "b2383929eb8e99b2716fa0d4e2f6e03983e626a57cf00fe85175869c54aa3592",
    ),
    "tuning": (
        "Tuning.zip",
        "849423d36bb8fcc2d91a5b189a3b6d93c3d4071c9701eaaa44ba393a510459c4",
    ),
    "testing": (
        "Testing.zip",
        "3379730221f43830d30fddf131750e967c9c9bdf04f98811e852a050eb659ccc",
    ),
}
DEFAULT_PARTS = ("training", "tuning")
_CHUNK = 1 << 20

#: Receives the one-line status messages ("verified; extracting into ...").
Log = Callable[[str], None]
#: Opens a progress bar for one file: ``bar(name, total_bytes_or_None, bytes_already_there)``
#: is a context manager that yields ``advance(n_bytes)``.
ProgressBar = Callable[[str, int | None, int], AbstractContextManager[Callable[[int], None]]]


def download_neurips(
    root: str | os.PathLike,
    parts: Iterable[str] = DEFAULT_PARTS,
    *,
    base_url: str = ZENODO_URL,
    archives: Mapping[str, tuple[str, str]] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    log: Log | None = None,
    bar: ProgressBar | None = None,
) -> list[Path]:
    """Download, verify and unzip the chosen NeurIPS archives into ``root``.

    Args:
        root: folder that receives the archives and their extracted folders.
        parts: any of ``training``, ``tuning``, ``testing``.
        base_url: where ``<base_url>/<archive name>`` is fetched from.
        archives: part -> (file name, SHA-256); defaults to :data:`NEURIPS_ARCHIVES`.
        progress: show short status lines and the progress bar; ``False`` shows nothing.
        timeout: seconds to wait for the server before giving up.
        log: where the status lines go when ``progress`` is on (default: printed to stdout).
        bar: draws the download progress when ``progress`` is on (default: no bar).

    Returns:
        The archive paths, one per part (an archive deleted after extraction is not fetched
        again).

    Raises:
        ConfigError: an unknown part name.
        DownloadError: the server is unreachable, the download breaks off, the checksum does
            not match, or the archive is unsafe or corrupt.
    """
    table = dict(NEURIPS_ARCHIVES if archives is None else archives)
    wanted = list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    unknown = [p for p in wanted if p not in table]
    if unknown or not wanted:
        raise ConfigError(
            f"--parts: unknown part {', '.join(unknown) or '(none given)'}; valid parts are: "
            f"{', '.join(table)}."
        )
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    fetched = []
    for part in wanted:
        filename, sha256 = table[part]
        url = f"{base_url.rstrip('/')}/{urllib.parse.quote(filename)}"
        fetched.append(
            fetch_archive(
                url, root / filename, sha256, timeout=timeout, log=_say(progress, log),
                bar=bar if progress else None,
            )
        )
    return fetched


def _say(progress: bool, log: Log | None) -> Log:
    """The status-line sink: nothing without ``progress``, else ``log`` or stdout."""
    if not progress:
        return _silent
    return log if log is not None else print


def _silent(message: str) -> None:
    pass


def fetch_archive(
    url: str,
    archive: Path,
    sha256: str,
    *,
    timeout: float = 60.0,
    log: Log = print,
    bar: ProgressBar | None = None,
) -> Path:
    """Make sure ``archive`` is downloaded, verified and extracted beside itself; idempotent.

    Status lines go to ``log``; ``bar`` (see :data:`ProgressBar`) shows the download.
    """
    marker = archive.with_name(f".{archive.name}.extracted")
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == sha256:
        log(f"{archive.name}: already downloaded and extracted.")
        return archive
    if archive.is_file() and file_sha256(archive) != sha256:
        log(f"{archive.name}: existing file fails its checksum; downloading it again.")
        archive.unlink()
    if not archive.is_file():
        download_file(url, archive, sha256, timeout=timeout, bar=bar)
    log(f"{archive.name}: verified; extracting into {archive.parent}.")
    extract_zip(archive, archive.parent)
    write_text(marker, sha256 + "\n")
    return archive


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, dest: Path, sha256: str, *, timeout: float = 60.0, bar: ProgressBar | None = None
) -> Path:
    """Stream ``url`` to ``dest`` via ``dest.incomplete``, resuming it; verify, then rename.

    ``bar`` (see :data:`ProgressBar`) is opened for the transfer when given.

    Raises:
        DownloadError: unreachable server, HTTP error, broken-off transfer (the partial file is
            kept for resuming) or checksum mismatch (the bad file is deleted).
    """
    partial = dest.with_name(dest.name + ".incomplete")
    offset = partial.stat().st_size if partial.is_file() else 0
    response = _open(url, offset, dest, timeout)
    if response is None:  # 416: the partial file already holds the whole archive
        _verify_and_place(partial, dest, sha256, file_sha256(partial))
        return dest
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header and sends the whole file
        digest = hashlib.sha256()
        if offset:
            with partial.open("rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
        length = response.headers.get("Content-Length")
        total = None if length is None else offset + int(length)
        with (
            partial.open("ab" if offset else "wb") as out,
            (bar or _no_bar)(dest.name, total, offset) as advance,
        ):
            _stream(response, out, digest, advance, url, total)
    _verify_and_place(partial, dest, sha256, digest.hexdigest())
    return dest


def _open(url: str, offset: int, dest: Path, timeout: float) -> Any:
    headers = {"User-Agent": f"celltune/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None
        raise DownloadError(
            f"{url}: the server answered HTTP {exc.code} ({exc.reason}); download the archive "
            f"manually into {dest.parent} and rerun."
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {host} ({reason}); download the archives manually from "
            f"{url.rsplit('/', 1)[0]} into {dest.parent} and rerun."
        ) from exc


def _stream(
    response: Any,
    out: Any,
    digest: Any,
    advance: Callable[[int], None],
    url: str,
    expected: int | None,
) -> None:
    """Copy the body to ``out``; a short or failed read leaves the partial file for resuming."""
    problem: Exception | None = None
    try:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            advance(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        problem = exc
    out.flush()
    received = out.tell()
    # urllib returns b"" when the server hangs up early, so compare with Content-Length.
    if problem is not None or (expected is not None and received < expected):
        reason = f" ({problem!r})" if problem is not None else ""
        raise DownloadError(
            f"{url}: download broke off after {received:,} bytes{reason}; rerun the command "
            "to resume it."
        ) from problem


def _verify_and_place(partial: Path, dest: Path, expected: str, actual: str) -> None:
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{dest.name}: checksum mismatch (SHA-256 {actual[:12]}..., expected "
            f"{expected[:12]}...); the corrupted download was deleted, rerun to fetch it again."
        )
    os.replace(partial, dest)


@contextlib.contextmanager
def _no_bar(name: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def _unsafe(name: str, dest: Path) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        return True
    return not (dest / path).resolve().is_relative_to(dest)


def extract_zip(archive: Path, dest: Path) -> list[Path]:
    """Unzip ``archive`` into ``dest`` after checking no member escapes it.

    Raises:
        DownloadError: not a zip, a corrupt member, or a member path outside ``dest``.
    """
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            bad = next((m.filename for m in members if _unsafe(m.filename, dest)), None)
            if bad is not None:
                raise DownloadError(
                    f"{archive}: member {bad!r} would be written outside {dest}; nothing was "
                    "extracted, check where the archive came from."
                )
            return [Path(zf.extract(m, dest)) for m in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DownloadError(
            f"{archive}: cannot be unzipped ({exc}); delete it and rerun to download it again."
        ) from exc
