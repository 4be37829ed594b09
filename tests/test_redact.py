"""Secrets are masked wherever text leaves the process."""

from __future__ import annotations

import io
import json
import logging

from mesh_canary.logs import JsonFormatter
from mesh_canary.redact import RedactingFilter, redact, redact_value, register_secret

TOKEN = "tok-3f9c2e7a1b"


def test_userinfo_in_urls_is_masked() -> None:
    text = f"Prometheus at http://admin:{TOKEN}@prom:9090/api is unreachable"
    assert TOKEN not in redact(text)
    assert "http://***@prom:9090/api" in redact(text)


def test_secret_query_parameters_and_bearer_tokens_are_masked() -> None:
    assert TOKEN not in redact(f"https://hooks.example/x?access_token={TOKEN}&a=1")
    assert "a=1" in redact(f"https://hooks.example/x?access_token={TOKEN}&a=1")
    assert TOKEN not in redact(f"Authorization: Bearer {TOKEN}")


def test_registered_values_are_masked_anywhere() -> None:
    secret = "https://hooks.slack.com/services/T000/B000/zzSECRETzz"
    register_secret(secret)
    assert "zzSECRETzz" not in redact(f"posting to {secret} failed")
    assert redact_value({"a": [f"x {secret}"]}) == {"a": ["x ***"]}


def test_the_logging_filter_redacts_messages_args_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s", f"http://u:{TOKEN}@h/q", extra={"url": f"http://h/?token={TOKEN}"})
        try:
            raise RuntimeError(f"boom http://u:{TOKEN}@h")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out
    assert json.loads(out.splitlines()[0])["url"] == "http://h/?token=***"
