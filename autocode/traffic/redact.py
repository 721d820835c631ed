"""Credential redaction for traffic records: headers, URL userinfo, query parameters, values.

Runs inside the proxy hook, so it is built once (compiled regexes) and kept cheap.
Redaction keeps what an auditor needs (which header, which auth scheme, which cookie
names) and drops only the secret part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "[REDACTED]"

# Always redacted, whatever the config says.
ALWAYS_REDACTED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)

# Name patterns (header names and URL query parameter names), searched case-insensitively.
DEFAULT_NAME_PATTERNS = (
    r"token",
    r"secret",
    r"passw",
    r"api[-_]?key",
    r"^key$",
    r"^auth(?:orization)?$",
    r"session",
    r"credential",
    r"signature",
    r"^sig$",
    r"private[-_]?key",
)

# Well-known credential formats, replaced wherever they appear in header values or URLs.
DEFAULT_VALUE_PATTERNS = (
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}",  # OpenAI / Anthropic style keys
    r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab
)

# Headers whose values are URLs that may carry credentials in the query string.
URL_VALUED_HEADERS = frozenset({"referer", "location", "content-location", "origin"})


class Redactor:
    def __init__(
        self,
        extra_headers: Iterable[str] = (),
        name_patterns: Iterable[str] = (),
        value_patterns: Iterable[str] = (),
    ) -> None:
        self.headers = ALWAYS_REDACTED_HEADERS | {h.lower() for h in extra_headers}
        self.name_re = re.compile(
            "|".join(f"(?:{p})" for p in (*DEFAULT_NAME_PATTERNS, *name_patterns)), re.I
        )
        self.value_re = re.compile(
            "|".join(f"(?:{p})" for p in (*DEFAULT_VALUE_PATTERNS, *value_patterns))
        )
        self._name_cache: dict[str, bool] = {}

    def _is_secret_name(self, name: str) -> bool:
        # Header names repeat endlessly; cache the decision (bounded to stay small).
        hit = self._name_cache.get(name)
        if hit is None:
            hit = name in self.headers or bool(self.name_re.search(name))
            if len(self._name_cache) < 4096:
                self._name_cache[name] = hit
        return hit

    def header_value(self, name: str, value: str) -> str:
        """Return ``value`` with credentials removed; ``name`` must be lowercase."""
        if self._is_secret_name(name):
            return self._redact_secret_header(name, value)
        if name in URL_VALUED_HEADERS:
            return self.url(value)
        return self.value_re.sub(REDACTED, value)

    @staticmethod
    def _redact_secret_header(name: str, value: str) -> str:
        if name in ("authorization", "proxy-authorization"):
            # Keep the scheme ("Bearer", "Basic"): useful for audit, not secret.
            scheme, sep, _ = value.strip().partition(" ")
            return f"{scheme} {REDACTED}" if sep else REDACTED
        if name == "cookie":
            names = [c.split("=", 1)[0].strip() for c in value.split(";") if c.strip()]
            return "; ".join(f"{n}={REDACTED}" for n in names) or REDACTED
        if name == "set-cookie":
            return f"{value.split('=', 1)[0].strip()}={REDACTED}"
        return REDACTED

    def headers_dict(self, fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """Redacted header mapping, lowercase names, repeated headers joined with ', '."""
        out: dict[str, str] = {}
        for raw_name, raw_value in fields:
            name = raw_name.decode("latin-1").lower()
            value = self.header_value(name, raw_value.decode("latin-1"))
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    def url(self, url: str) -> str:
        """Remove userinfo passwords, secret query parameters and known token formats."""
        if "?" not in url and "@" not in url:
            return self.value_re.sub(REDACTED, url)  # fast path: nothing to parse
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.value_re.sub(REDACTED, url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            # "user:password" keeps the user name; a lone "token@" is all secret.
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{REDACTED}@{hostport}" if has_password else f"{REDACTED}@{hostport}"
        query = parts.query
        if query:
            query = "&".join(self._query_pair(pair) for pair in query.split("&"))
        rebuilt = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        return self.value_re.sub(REDACTED, rebuilt)

    def _query_pair(self, pair: str) -> str:
        name, sep, _ = pair.partition("=")
        if sep and self._is_secret_name(unquote(name).lower()):
            return f"{name}={REDACTED}"
        return pair
