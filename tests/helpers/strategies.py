"""Hypothesis strategies several test modules share."""

from __future__ import annotations

from hypothesis import strategies as st

# Any JSON value Python's json writes and reads back as it was (no NaN, no infinities;
# hypothesis's text() draws no surrogates).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
