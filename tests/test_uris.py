"""URI and path normal forms (`holdgate.protocol.uris`): what every upstream reads the same
way, and what is refused as ambiguous. How rules use them: tests/test_rules_uri.py."""

import pytest

from holdgate.protocol.uris import AmbiguousValue, canonical_uri, normalise_path, normalise_uri


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("file:///srv/public/../secret/keys.pem", "file:///srv/secret/keys.pem"),
        ("file:///srv/public/./../../etc/passwd", "file:///etc/passwd"),
        ("file:///a/b/..", "file:///a/"),
        ("file:///a/b/.", "file:///a/b/"),
        ("HTTPS://Example.com/a/%7euser/%c3%a9", "https://Example.com/a/~user/%C3%A9"),
        ("customers://schema", "customers://schema"),
        ("urn:isbn:0451450523", "urn:isbn:0451450523"),
        ("db://t/rows?where=a%2Fb#frag", "db://t/rows?where=a%2Fb#frag"),
        ("", ""),
    ],
)
def test_normal_form(uri, normal):
    assert normalise_uri(uri) == normal


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///a/%2e%2e/b", "an encoded dot segment"),
        ("file:///a/%2E/b", "an encoded dot segment"),
        ("file:///a%2fb", "an encoded slash"),
        ("file:///a%5Cb", "an encoded slash or backslash"),
        ("file:///a\\b", "a backslash"),
        ("file:///a\x00b", "a control character"),
        ("file:///a\nb", "a control character"),
        ("file:///a%0ab", "an encoded control character"),
        ("file:///a%zzb", "malformed percent-encoding"),
        ("file:///a%2", "malformed percent-encoding"),
        ("file:///a/%252e%252e/b", "double percent-encoding"),
        ("file:///a//b", "an empty path segment"),
        ("file:///..", "a '..' above the root"),
        ("../x", "a '..' above the root"),
        ("repo://../etc/passwd", "a dot segment as the authority"),
        ("file:///a?/../b", "a '..' segment in the query or fragment"),
        ("file:///a\t", "surrounding whitespace"),
    ],
)
def test_ambiguous_uris_are_refused(uri, why):
    with pytest.raises(AmbiguousValue, match=why):
        normalise_uri(uri)


@pytest.mark.parametrize(
    ("path", "normal"),
    [("/", "/"), ("/a/./b/", "/a/b"), ("/a//b", "/a/b"), ("/a/my%20file", "/a/my%20file")],
)
def test_normalise_path(path, normal):
    assert normalise_path(path) == normal


@pytest.mark.parametrize(
    "path",
    ["srv/public", "/srv/../etc", "/srv/%2e%2e/etc", "/srv\\x", "//srv/public", " /srv"],
)
def test_ambiguous_paths_are_refused(path):
    with pytest.raises(AmbiguousValue):
        normalise_path(path)


def test_canonical_uri_says_why_instead_of_raising_with_or_without_the_cache():
    assert canonical_uri("file:///a/./b") == ("file:///a/b", "")
    assert canonical_uri("file:///a%2fb") == (None, "an encoded slash or backslash")
    long = "file:///" + "a/" * 3000 + "../" * 2999 + "x"
    assert canonical_uri(long) == ("file:///a/x", "")
    assert canonical_uri(long + "/%2e%2e") == (None, "an encoded dot segment")
