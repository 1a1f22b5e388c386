"""s3://bucket/key URIs, split once: the bucket and key an allow-list checks are the bytes S3 is asked for.

S3 takes a key literally: `%6f` is three characters, not `o`, and `..` or an empty segment (`//`) is part of the
name, not a step up or nothing. A check that decoded or resolved the path while the I/O used the literal key would
admit `s3://bucket/%6fut/x.csv` under a `s3://bucket/out/` rule and write outside it. So a URI holding a
percent-escape, a `.`/`..`/empty segment, a backslash, `?`, `#`, whitespace or a control character is refused
here, and the allow-list (ingestion.refused_source) and every read or write (ingestion, batch outputs, the
monitor's capture dir; the server's bundle downloads, its capture shipping and the EC2 bootstrap) use the one
`S3Uri` this returns. The prediction server owns it (a serving host installs serving/ alone); the pipeline side
imports it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's rule for bucket names; no user@, no :port


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # exactly the key S3 is asked for; "" or ending in "/" for a prefix

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def segments(self) -> tuple[str, ...]:
        """The key's segments; a prefix's without the empty one after its last "/"."""
        key = self.key[:-1] if self.key.endswith("/") else self.key
        return tuple(key.split("/")) if key else ()

    def key_below(self, *names: str) -> str:
        """The key of `names` (relative, "/"-separated) below this URI's key taken as a folder: its trailing "/"
        is not doubled, and the bucket's root gives the names alone."""
        return "/".join(filter(None, (self.key.removesuffix("/"), *names)))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str, *, prefix: bool = False) -> S3Uri:
    """The bucket and key of `uri`; with `prefix`, a folder (s3://bucket/ or s3://bucket/dir/) is accepted too.
    Raises ValueError saying what makes the URI ambiguous or not an object's."""
    if not uri.startswith("s3://"):
        raise ValueError("it is not an s3:// URI")
    if any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise ValueError("it holds whitespace or control characters")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.' and '-')")
    if "%" in key:
        raise ValueError("it holds a '%' (S3 keys are literal: a percent-escape is not decoded, so it is refused)")
    for char, what in (("?", "'?'"), ("#", "'#'"), ("\\", "a backslash")):
        if char in key:
            raise ValueError(f"an s3:// URI's key holds no {what}")
    parsed = S3Uri(bucket, key)
    if "" in parsed.segments:
        raise ValueError("it holds an empty path segment ('//')")
    if {".", ".."} & set(parsed.segments):
        raise ValueError("it holds a '.' or '..' path segment (S3 keys take them literally)")
    if parsed.is_prefix and not prefix:
        raise ValueError("it names no object: give s3://bucket/key")
    return parsed
