"""vLLM's tests, from its sdist: the wheel ships none. Read from the package
indexes pip is configured with, checked against the index's sha256 and
extracted once per machine, since every run needs them and the sdist is big."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from filelock import FileLock

from vllm_harness.models import cache_root

VLLM_VERSION = "0.32.0"
SDIST = f"vllm-{VLLM_VERSION}.tar.gz"
#: Bumped when the extraction changes, so stale copies are redone.
EXTRACT_RECIPE = 1


def sdist_path() -> Path:
    return cache_root() / "downloads" / SDIST


class _Links(HTMLParser):
    """The ``href`` of every anchor of a PEP 503 simple index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def find_sdist_url(page: str, base_url: str, filename: str = SDIST) -> tuple[str, str | None]:
    """The URL of ``filename`` on a simple index page and its sha256 if listed."""
    parser = _Links()
    parser.feed(page)
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(base_url, href).partition("#")
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == filename:
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return url, digest
    raise LookupError(f"{filename} not listed on {base_url}")


def index_urls() -> list[str]:
    """The package indexes pip uses here: its configuration, then PyPI.

    ``pip download`` cannot fetch vLLM's sdist without preparing its metadata,
    which builds vLLM, so the harness reads the index itself.
    """
    urls: list[str] = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls += os.environ.get(var, "").split()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.split(".")[-1] in ("index-url", "extra-index-url"):
                urls += value.strip().strip("'\"").split()
    urls.append("https://pypi.org/simple")
    return list(dict.fromkeys(u.rstrip("/") for u in urls))


def _download_sdist(target: Path) -> None:
    errors = []
    for index in index_urls():
        page_url = f"{index}/vllm/"
        try:
            request = urllib.request.Request(page_url, headers={"Accept": "text/html"})
            with urllib.request.urlopen(request, timeout=120) as response:
                page = response.read().decode()
            url, digest = find_sdist_url(page, page_url)
            part = target.with_suffix(".part")
            sha = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=600) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    dst.write(chunk)
            if digest and sha.hexdigest() != digest:
                part.unlink()
                raise ValueError(f"sha256 mismatch for {url}")
            part.rename(target)
            return
        except (OSError, LookupError, ValueError) as e:
            errors.append(f"{page_url}: {e}")
    raise RuntimeError(f"could not download {SDIST}:\n" + "\n".join(errors))


def tests_root() -> Path:
    """A folder holding the sdist's ``tests/``, downloaded and extracted once.

    A file lock makes concurrent callers share one download and extraction.
    """
    root = cache_root() / "vllm-tests" / VLLM_VERSION
    marker = root / ".extracted.json"
    expected = {"sdist": SDIST, "recipe": EXTRACT_RECIPE}
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        return root
    (cache_root() / "downloads").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root() / f".vllm-{VLLM_VERSION}-tests.lock")):
        if marker.is_file() and json.loads(marker.read_text()) == expected:
            return root
        if not sdist_path().is_file():
            _download_sdist(sdist_path())
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".staging-"))
        try:
            prefix = f"vllm-{VLLM_VERSION}/tests/"
            with tarfile.open(sdist_path()) as archive:
                members = []
                for m in archive.getmembers():
                    if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                        m.name = m.name[len(prefix) - len("tests/"):]
                        members.append(m)
                archive.extractall(staging, members=members, filter="data")
            # Anchors pytest's rootdir here, away from any ini file above the cache.
            (staging / "pytest.ini").write_text("[pytest]\n")
            (staging / ".extracted.json").write_text(json.dumps(expected))
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root
