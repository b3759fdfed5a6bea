import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossover.specs import format_tokens, parse_tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("96B", 96 * 10**9),
        ("1.5B", 1_500_000_000),
        ("500M", 500_000_000),
        ("50k", 50_000),
        ("1.5e9", 1_500_000_000),
        (1000, 1000),
        ("2000000", 2_000_000),
        ("1.5T", 1_500_000_000_000),
        (2e6, 2_000_000),
        ("0.5B", 500_000_000),
    ],
)
def test_parse_tokens_accepts_the_usual_forms(text, expected):
    assert parse_tokens(text) == expected


@pytest.mark.parametrize("bad", ["lots", "1.5", "1.2345k", "", True, None, [1], "5X"])
def test_parse_tokens_rejects_non_counts(bad):
    with pytest.raises(ValueError):
        parse_tokens(bad)


@given(st.integers(min_value=1, max_value=10**13))
def test_format_is_short_and_close(n):
    text = format_tokens(n)
    assert len(text) <= 6
    assert abs(parse_tokens(text) - n) / n < 0.01 if text[-1] in "kMBT" else parse_tokens(text) == n


@pytest.mark.parametrize(
    ("n", "digits", "expected"),
    [(958_000, 1, "1M"), (999_999, 3, "1M"), (440_000, 2, "440k"), (40_960, 3, "41k"), (999.6, 3, "1k"), (12, 3, "12")],
)
def test_format_rounds_before_it_picks_the_unit(n, digits, expected):
    """A crossover's interval quoted to one figure reads "200k to 1M", never "1000k"."""
    assert format_tokens(n, digits) == expected
