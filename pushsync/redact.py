"""URLs without their secrets, for logs and error messages: the password in the netloc and
the query parameters that carry one."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

# Query parameters with a secret (libpq's password=, sslpassword=; redis-py's password=, sentinel_password=)
_SECRET_PARAMS = ("password", "passwd", "secret", "token")


def _redact_query(query: str) -> str:
    out = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        if eq and any(word in unquote(name).lower() for word in _SECRET_PARAMS):
            pair = f"{name}=***"
        out.append(pair)
    return "&".join(out)


def redact_url(url: str) -> str:
    """The URL without its secrets: the password in the netloc and secret query parameters."""
    if ";" in url:  # a list of sentinel:// addresses
        return ";".join(redact_url(u) for u in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show nothing of it that could be a secret
        return "<unparsable URL>"
    out = url
    if parts.query:  # edited in place: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path
        head, _, rest = out.partition("?")
        query, hash_, fragment = rest.partition("#")
        out = f"{head}?{_redact_query(query)}{hash_}{fragment}"
    if password is not None:
        out = out.replace(parts.netloc, f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[1]}", 1)
    return out
