"""HTTP(S) and ``file://`` fetch of one archive into a file, with one-line errors.

:func:`fetch` streams a URL to a file with adex's rich progress bar
(:func:`adex.progress.progress_bar`, counting megabytes) and turns every network failure
(unreachable host, HTTP error, timeout, a transfer that stops early) into a
:class:`~adex.errors.DataError` with a one-line message. What the bytes must be is
checked afterwards, against the checksum manifest (:mod:`adex.checksums`).
"""
from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from adex.catalog import BASE_URL_ENV
from adex.errors import DataError

_BLOCK = 1 << 20
_MB = 1e6  # the progress bar counts megabytes


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def fetch(
    url: str, target: Path, *, timeout: float = 60.0, progress: bool = False, label: str = "", description: str = ""
) -> int:
    """Stream ``url`` into the file ``target``; returns the byte count.

    ``label`` names what is downloaded in error messages, ``description`` in the
    progress bar. Raises DataError with a one-line message when the host is
    unreachable, answers with an HTTP error, or the transfer stops early.
    """
    from adex import __version__
    from adex.progress import progress_bar

    label = label or url
    request = urllib.request.Request(url, headers={"User-Agent": f"adex/{__version__} (dataset download)"})
    host = urllib.parse.urlsplit(url).netloc or url
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress_bar(disable=not progress) as bar:
                task = bar.add_task(
                    f"downloading {description or label} (MB)", total=None if total is None else total / _MB
                )
                while block := response.read(_BLOCK):
                    out.write(block)
                    written += len(block)
                    bar.advance(task, len(block) / _MB)
            if total is not None and written < total:
                raise DataError(f"download of {label} interrupted: got {written} of {total} bytes from {url}")
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {label}: HTTP {exc.code} {_one_line(exc.reason)} from {url}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DataError(f"cannot download {label}: {host} did not answer within {timeout:g} s") from None
        raise DataError(
            f"cannot download {label}: {host} unreachable ({_one_line(reason)}); "
            f"check the network, or use a mirror (--base-url / {BASE_URL_ENV})"
        ) from None
    except (socket.timeout, TimeoutError):
        raise DataError(f"download of {label} interrupted: {host} stopped answering after {written} bytes") from None
    except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:  # reset, IncompleteRead...
        if isinstance(exc, OSError) and getattr(exc, "filename", None) == str(target):
            raise DataError(f"cannot write {target}: {exc.strerror}") from None
        raise DataError(
            f"download of {label} interrupted after {written} bytes ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return written
