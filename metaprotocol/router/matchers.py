"""Attribute matchers compiled to small predicates over metadata."""

from __future__ import annotations

import re
from collections.abc import Callable

from metaprotocol.config.model import AttributeMatcher, MatchKind
from metaprotocol.spi import Metadata

Predicate = Callable[[Metadata], bool]


def _value_test(m: AttributeMatcher) -> Callable[[str], bool]:
    want = m.value.lower() if m.ignore_case else m.value
    kind = m.kind
    if kind is MatchKind.EXACT:
        test: Callable[[str], bool] = want.__eq__
    elif kind is MatchKind.PREFIX:

        def test(v: str) -> bool:
            return v.startswith(want)

    elif kind is MatchKind.SUFFIX:

        def test(v: str) -> bool:
            return v.endswith(want)

    elif kind is MatchKind.CONTAINS:

        def test(v: str) -> bool:
            return want in v

    elif kind is MatchKind.REGEX:
        # Envoy's safe_regex matches the whole value (RE2 full match).
        pattern = re.compile(m.value, re.IGNORECASE if m.ignore_case else 0)

        def test(v: str) -> bool:
            return pattern.fullmatch(v) is not None

    else:  # pragma: no cover - PRESENT is handled by the caller
        raise ValueError(kind)
    if m.ignore_case:
        inner = test

        def test(v: str) -> bool:
            return inner(v.lower())

    return test


def compile_matcher(m: AttributeMatcher) -> Predicate:
    """A predicate for one matcher.

    As with Envoy's HeaderMatcher, an absent attribute never matches a value test, even inverted
    (``invert`` flips the test on a present value only); ``present`` with invert means "absent".

    Raises:
        re.error: the regex does not compile (config validation reports it with its path).
    """
    key = m.name.lower()
    if m.kind is MatchKind.PRESENT:
        want_present = (m.value.lower() != "false") != m.invert

        def present(md: Metadata) -> bool:
            return (key in md) is want_present

        return present
    test = _value_test(m)
    invert = m.invert

    def match(md: Metadata) -> bool:
        v = md.get(key)
        if v is None:
            return False
        return test(v) is not invert

    return match
