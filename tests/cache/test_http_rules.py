"""Cache keys, Range parsing and conditional requests: pure functions."""

import pytest

from gateway.cache.conditional import not_modified
from gateway.cache.keys import normalise_path, parse_vary, variant_key
from gateway.cache.ranges import UNSATISFIABLE, if_range_allows, parse_range


@pytest.mark.parametrize("header,expected", [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=100-", (100, 999)), ("bytes=-100", (900, 999)),
    ("bytes=0-5000", (0, 999)), ("bytes=-5000", (0, 999)), ("bytes=1000-", UNSATISFIABLE),
    ("bytes=-0", UNSATISFIABLE), ("bytes=0-1,5-9", None), ("items=0-1", None), ("bytes=5-1", None),
    ("bytes=a-b", None), ("bytes=-", None),
])
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


def test_if_range():
    assert if_range_allows(None, '"a"', None)
    assert if_range_allows('"a"', '"a"', None)
    assert not if_range_allows('"b"', '"a"', None)
    assert not if_range_allows('W/"a"', 'W/"a"', None)  # weak validators never allow a range
    lm = "Sat, 21 Nov 2026 12:00:00 GMT"
    assert if_range_allows(lm, None, lm) and not if_range_allows(lm, None, None)


@pytest.mark.parametrize("request_headers,expected", [
    ({"if-none-match": '"abc"'}, True),
    ({"if-none-match": 'W/"abc"'}, True),
    ({"if-none-match": '"x", "abc"'}, True),
    ({"if-none-match": "*"}, True),
    ({"if-none-match": '"other"'}, False),
    ({"if-none-match": '"other"', "if-modified-since": "Sun, 22 Nov 2026 00:00:00 GMT"}, False),
    ({"if-modified-since": "Sun, 22 Nov 2026 00:00:00 GMT"}, True),
    ({"if-modified-since": "Fri, 20 Nov 2026 00:00:00 GMT"}, False),
    ({"if-modified-since": "garbage"}, False),
    ({}, False),
])
def test_not_modified(request_headers, expected):
    response = {"etag": '"abc"', "last-modified": "Sat, 21 Nov 2026 12:00:00 GMT"}
    assert not_modified(request_headers, response) is expected


def test_variants_are_normalised():
    vary = parse_vary("Accept-Encoding, accept")
    assert vary == ("accept", "accept-encoding")
    corgi = variant_key("r/x", vary, {"accept": "application/vnd.npm.install-v1+json; q=1.0, "
                                                "application/json; q=0.8, */*",
                                      "accept-encoding": "gzip, deflate, br"})
    corgi_again = variant_key("r/x", vary, {"accept": "application/vnd.npm.install-v1+json;q=1.0,"
                                                      "application/json;q=0.8,*/*",
                                            "accept-encoding": "br,gzip, deflate, x-custom"})
    full = variant_key("r/x", vary, {"accept": "application/json",
                                     "accept-encoding": "gzip, deflate, br"})
    assert corgi == corgi_again != full
    assert variant_key("r/x", (), {"accept": "x"}) == "r/x"


@pytest.mark.parametrize("raw,ok", [
    ("/simple/requests/", True), ("/@types%2fnode", True), ("/a?b=c", True),
    ("/a/../etc/passwd", False), ("/a/%2e%2e/b", False), ("/a%2fb", False), ("/a%00b", False),
    ("relative", False), ("/a\\b", False), ("/@x%2f..%2f..%2fy", False),
])
def test_paths_that_could_escape_the_key_space_are_refused(raw, ok):
    assert (normalise_path(raw) is not None) is ok
