"""The console's session: a cookie signs a browser in, and the API takes it only with the page's token."""

from __future__ import annotations

from dedicate.web.session import cookie_key, csrf_token, same_origin, session_cookie, with_bearer


def scope(*headers: tuple[str, str]) -> dict[str, object]:
    return {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers]}


def auth(s: dict[str, object]) -> list[bytes]:
    return [v for k, v in s["headers"] if k == b"authorization"]  # type: ignore[attr-defined]


def test_the_cookie_and_its_token_together_become_a_bearer_key() -> None:
    s = with_bearer(scope(("cookie", "a=1; dedicate_key=ddc_abc"), ("x-dedicate-csrf", csrf_token("ddc_abc"))))
    assert auth(s) == [b"Bearer ddc_abc"]


def test_a_cookie_alone_or_with_a_wrong_token_authenticates_nothing() -> None:
    assert auth(with_bearer(scope(("cookie", "dedicate_key=ddc_abc")))) == []
    assert auth(with_bearer(scope(("cookie", "dedicate_key=ddc_abc"), ("x-dedicate-csrf", "0" * 64)))) == []
    assert auth(with_bearer(scope(("cookie", "dedicate_key=ddc_abc"),
                                  ("x-dedicate-csrf", csrf_token("ddc_other"))))) == []
    assert auth(with_bearer(scope(("x-dedicate-csrf", csrf_token("ddc_abc"))))) == []


def test_a_key_the_caller_sends_itself_wins_over_the_cookie() -> None:
    s = with_bearer(scope(("authorization", "Bearer ddc_mine"), ("cookie", "dedicate_key=ddc_abc"),
                          ("x-dedicate-csrf", csrf_token("ddc_abc"))))
    assert auth(s) == [b"Bearer ddc_mine"]


def test_the_token_does_not_reveal_the_key_and_differs_per_key() -> None:
    assert "ddc_abc" not in csrf_token("ddc_abc")
    assert csrf_token("ddc_abc") != csrf_token("ddc_abd")


def test_the_session_cookie_is_http_only_and_same_site_strict() -> None:
    c = session_cookie("ddc_abc", secure=False)
    assert "HttpOnly" in c and "SameSite=Strict" in c and "Secure" not in c and "Max-Age" not in c
    assert "; Secure" in session_cookie("ddc_abc", secure=True)


def test_a_malformed_cookie_header_is_no_key() -> None:
    assert cookie_key('dedicate_key="unterminated') is None
    assert cookie_key(None) is None
    assert cookie_key("other=1") is None


def test_a_form_post_from_another_site_is_told_apart() -> None:
    assert same_origin({"sec-fetch-site": "same-origin"})
    assert not same_origin({"sec-fetch-site": "cross-site"})
    assert same_origin({"origin": "http://127.0.0.1:8700", "host": "127.0.0.1:8700"})
    assert not same_origin({"origin": "http://evil.example", "host": "127.0.0.1:8700"})
    assert not same_origin({"origin": "null", "host": "127.0.0.1:8700"})
    assert same_origin({"host": "127.0.0.1:8700"})  # no browser context at all
