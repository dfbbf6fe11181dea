from __future__ import annotations

import pytest

from newsletter import tokens


def test_round_trip():
    token = tokens.sign("s3cret", "unsubscribe", {"s": 42, "l": 7})
    assert tokens.verify("s3cret", "unsubscribe", token) == {"s": 42, "l": 7}
    assert "42" not in token.split(".")[1]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: "e30" + t[3:],  # payload changed
        lambda t: t.replace(".", ""),  # no separator
        lambda t: "",
    ],
)
def test_forged_or_damaged_tokens_are_refused(mutate):
    token = tokens.sign("s3cret", "unsubscribe", {"s": 1})
    with pytest.raises(tokens.BadToken):
        tokens.verify("s3cret", "unsubscribe", mutate(token))


def test_wrong_secret_or_purpose():
    token = tokens.sign("s3cret", "unsubscribe", {"s": 1})
    with pytest.raises(tokens.BadToken):
        tokens.verify("other", "unsubscribe", token)
    with pytest.raises(tokens.BadToken):
        tokens.verify("s3cret", "confirm", token)


def test_expiry():
    token = tokens.sign("s3cret", "confirm", {"s": 1}, ttl=60)
    data = tokens.verify("s3cret", "confirm", token)
    assert data == {"s": 1}
    with pytest.raises(tokens.BadToken, match="expired"):
        tokens.verify("s3cret", "confirm", token, now=10**12)
