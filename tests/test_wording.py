from __future__ import annotations

import pytest

from newsletter.cli.common import plural


@pytest.mark.parametrize(
    ("n", "words", "said"),
    [
        (0, ("recipient",), "0 recipients"),
        (1, ("recipient",), "1 recipient"),
        (2, ("subscriber",), "2 subscribers"),
        (1, ("batch", "batches"), "1 batch"),
        (3, ("batch", "batches"), "3 batches"),
        (4210, ("subscriber",), "4,210 subscribers"),
    ],
)
def test_plural(n, words, said):
    assert plural(n, *words) == said
