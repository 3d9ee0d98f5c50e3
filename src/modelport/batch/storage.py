"""Where batch inputs and outputs live: local paths, `file://` and `s3://`/`obs://` URLs through fsspec.

A `Location` is a URL resolved to an fsspec filesystem and path; it turns paths back into URLs of
the form the user wrote (so a manifest names inputs the way `src_path` did). Listing is lazy:
directories are walked entry by entry and object-store prefixes page by page, never collected.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from modelport.batch.settings import BatchSettings
from modelport.errors import E, PlatformError

_OBJECT_SCHEMES = ("s3", "obs")
# s3fs buffers a whole part before uploading it; 5 MiB is the smallest part S3 accepts.
_WRITE_BLOCK = 5 * 2**20


@lru_cache(maxsize=4)
def _local_fs() -> LocalFileSystem:
    return LocalFileSystem(auto_mkdir=True)


@lru_cache(maxsize=4)
def _object_fs(endpoint: str | None, region: str | None) -> AbstractFileSystem:
    import s3fs

    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    if region:
        client["region_name"] = region
    return s3fs.S3FileSystem(
        client_kwargs=client,
        config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
        use_listings_cache=False,
        skip_instance_cache=True,
    )


@dataclass(frozen=True)
class Location:
    """A resolved URL: `fs` + `path`, and `prefix` to turn paths back into URLs of the user's form."""

    url: str
    fs: AbstractFileSystem
    path: str
    prefix: str  # "" for plain local paths, "file://", "s3://" or "obs://"

    @property
    def is_object_store(self) -> bool:
        return self.prefix in ("s3://", "obs://")

    def url_of(self, path: str) -> str:
        return self.prefix + path

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])


def resolve(url: str, settings: BatchSettings, field: str = "path") -> Location:
    """A URL or absolute local path → `Location`; `PlatformError` (ModelArts.3572) if unusable."""
    if not isinstance(url, str) or not url.strip():
        raise PlatformError(E.BATCH_PATH_INVALID, field=field, url=url, detail="it is empty")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _OBJECT_SCHEMES:
        if not parts.netloc:
            raise PlatformError(E.BATCH_PATH_INVALID, field=field, url=url, detail="no bucket name")
        path = (parts.netloc + parts.path).rstrip("/") or parts.netloc
        fs = _object_fs(settings.s3_endpoint_url, settings.s3_region)
        return Location(url, fs, path, f"{scheme}://")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PlatformError(E.BATCH_PATH_INVALID, field=field, url=url, detail="file:// URLs name local paths")
        return Location(url, _local_fs(), os.path.normpath(parts.path) if parts.path else "/", "file://")
    if scheme == "" and url.startswith("/"):
        return Location(url, _local_fs(), os.path.normpath(url), "")
    detail = "a relative path" if scheme == "" else f"scheme {scheme}:// is not supported"
    raise PlatformError(E.BATCH_PATH_INVALID, field=field, url=url, detail=detail)


def walk_files(loc: Location) -> Iterator[str]:
    """Paths of the files under `loc` (or `loc` itself if it is a file), lazily, in no set order."""
    if isinstance(loc.fs, LocalFileSystem):
        if os.path.isfile(loc.path):
            yield loc.path
            return
        yield from _walk_local(loc.path)
        return
    if loc.fs.isfile(loc.path):
        yield loc.path
        return
    bucket, _, key = loc.path.partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = loc.fs.call_s3("list_objects_v2", **kwargs)  # type: ignore[attr-defined]
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield f"{bucket}/{obj['Key']}"
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _walk_local(root: str) -> Iterator[str]:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield entry.path


def exists(loc: Location) -> bool:
    try:
        return bool(loc.fs.exists(loc.path))
    except OSError:
        return False


def check_writable(loc: Location, field: str = "dest_path") -> None:
    """Prove `loc` takes writes (write and delete a probe); ModelArts.3551/3567 if it does not."""
    fs = loc.fs
    probe = loc.join(f".modelport-probe-{uuid.uuid4().hex}")
    try:
        if loc.is_object_store:
            bucket = loc.path.split("/", 1)[0]
            try:
                fs.call_s3("head_bucket", Bucket=bucket)  # type: ignore[attr-defined]
            except FileNotFoundError as exc:
                raise PlatformError(
                    E.BATCH_PATH_MISSING, field=field, url=loc.url, detail=f"no bucket {bucket} ({exc})"
                ) from None
        else:
            fs.makedirs(loc.path, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except PlatformError:
        raise
    except FileNotFoundError as exc:
        raise PlatformError(E.BATCH_PATH_MISSING, field=field, url=loc.url, detail=_why(exc)) from None
    except Exception as exc:
        raise PlatformError(E.BATCH_PATH_ERROR, field=field, url=loc.url, detail=_why(exc)) from None


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def open_write(loc: Location, path: str) -> Any:
    """A binary writer for a (possibly large) output; object stores upload it in 5 MiB parts."""
    if loc.is_object_store:
        return loc.fs.open(path, "wb", block_size=_WRITE_BLOCK)
    return loc.fs.open(path, "wb")
