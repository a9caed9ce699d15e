"""Secrets never written: masking of command lines, known tokens and secret-looking text.

Used by the run log's writer (``run.json``'s ``argv``, span records), ``meter run`` (the
``command`` tag) and the carbon clients (messages built from a server's answer). Three kinds of
protection, applied together by :func:`redact`:

- known secret values (a provider's token, values of environment variables whose names say
  they are secrets: ``*_TOKEN``, ``*_KEY``, ``*_SECRET``, ``*_PASSWORD``...) are replaced
  wherever they occur, also URL-encoded;
- secret-looking text: ``--token X`` / ``--token=X``, ``NAME_TOKEN=X``, ``token=X`` in a query
  string, ``Authorization: Bearer X``, credentials in URLs (``https://user:pw@host``);
- a command line (:func:`mask_argv`) keeps its shape: ``["--token", "***"]``.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote, quote_plus

MASK = "***"

#: Option and variable names whose values are secrets (matched case-insensitively on the name
#: without leading dashes; ``-`` and ``_`` equivalent).
_SECRET_WORDS = r"(?:token|secret|password|passwd|passphrase|api[-_]?key|access[-_]?key|private[-_]?key|key|auth|credentials?|cookie)"
_SECRET_NAME = re.compile(rf"^(?:[a-z0-9]+[-_])*{_SECRET_WORDS}$", re.I)
# ``--token=X``, ``--api-key X`` handled in mask_argv; inside free text:
_OPT_EQ = re.compile(rf"(?<![\w-])(--?(?:[a-z0-9]+[-_])*{_SECRET_WORDS})(=|\s+)(?!-)(\S+)", re.I)
_VAR_EQ = re.compile(rf"\b((?:[A-Za-z0-9]+_)*{_SECRET_WORDS})=(\S+)", re.I)
_QUERY = re.compile(rf"([?&;](?:[a-z0-9]+[-_])*{_SECRET_WORDS}=)([^&;#\s]+)", re.I)
_HEADER = re.compile(r"\b(authorization|auth-token|x-api-key|api-key|cookie)(\s*[:=]\s*)(?:(bearer|basic|token)\s+)?(\S+)", re.I)
_URL_CRED = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/\s:@]*)(?::([^/\s@]*))?@", re.I)
#: Shorter values are not treated as secrets (they would mask ordinary words and numbers).
MIN_SECRET_LEN = 6


def is_secret_name(name: str) -> bool:
    """True for option or variable names that hold secrets: ``--token``, ``HF_TOKEN``, ``api-key``."""
    return bool(_SECRET_NAME.match(name.lstrip("-")))


def env_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of environment variables whose names say they are secrets (longest first)."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if is_secret_name(k) and isinstance(v, str) and len(v) >= MIN_SECRET_LEN}
    return tuple(sorted(vals, key=len, reverse=True))


def _forms(secret: str) -> list[str]:
    out = [secret, quote(secret, safe=""), quote_plus(secret)]
    return sorted({f for f in out if len(f) >= MIN_SECRET_LEN}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret and every secret-looking value replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    for s in secrets:
        if s and len(s) >= MIN_SECRET_LEN:
            for form in _forms(s):
                text = text.replace(form, MASK)
    text = _URL_CRED.sub(lambda m: m.group(1) + (f"{m.group(2)}:{MASK}@" if m.group(3) is not None else f"{MASK}@"), text)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + (m.group(3) + " " if m.group(3) else "") + MASK, text)
    text = _QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _OPT_EQ.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _VAR_EQ.sub(lambda m: m.group(1) + "=" + MASK, text)
    return text


def mask_argv(argv: Sequence[str], secrets: Iterable[str | None] = ()) -> list[str]:
    """A command line with the values of secret-looking arguments masked, keeping its shape:
    ``--token X`` -> ``--token ***``, ``--password=X`` -> ``--password=***``, ``HF_TOKEN=X`` ->
    ``HF_TOKEN=***``, ``https://u:pw@host`` -> ``https://u:***@host``; known secrets anywhere."""
    secrets = [s for s in secrets if s]
    out: list[str] = []
    mask_next = False
    for arg in map(str, argv):
        if mask_next and not (arg.startswith("--") and len(arg) > 2):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        if arg.startswith("-") and not arg.startswith("---"):
            name, eq, _value = arg.partition("=")
            if is_secret_name(name) and name.lstrip("-"):
                if eq:
                    out.append(f"{name}={MASK}")
                else:
                    out.append(arg)
                    mask_next = True
                continue
        elif "=" in arg and not arg.startswith("="):
            name, _, _value = arg.partition("=")
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) and is_secret_name(name):
                out.append(f"{name}={MASK}")
                continue
        out.append(redact(arg, secrets))
    return out


def redact_obj(value, secrets: Sequence[str] = ()):
    """A JSON-like value with :func:`redact` applied to every string in it (keys kept)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_obj(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v, secrets) for v in value]
    return value


def redact_known(value, secrets: Sequence[str] = ()):
    """A JSON-like value with every known secret value replaced in its strings (nothing else
    changed: for records, where secret-looking patterns could be ordinary data)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            if s and s in value:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {k: redact_known(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_known(v, secrets) for v in value]
    return value
