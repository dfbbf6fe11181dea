"""The inlined email is kept in .cache/inline/ by the hash of what was inlined."""

from __future__ import annotations

import subprocess
import sys

import pytest

from newsletter import render

DOC = ("<!DOCTYPE html><html><head><style>p { color: #123456 } "
       "@media (max-width: 600px) { p { font-size: 18px !important } }</style></head>"
       "<body><p>Listen first.</p></body></html>")


@pytest.fixture
def premailer_calls(monkeypatch):
    calls = []
    real = render._inline_css

    def counting(document: str) -> str:
        calls.append(document)
        return real(document)

    monkeypatch.setattr(render, "_inline_css", counting)
    return calls


PLAIN = render._inline_css(DOC)  # inlined without the cache, before any test counts calls


def test_an_unchanged_document_is_inlined_once(tmp_path, premailer_calls):
    first = render.inline_css(DOC, cache=tmp_path)
    second = render.inline_css(DOC, cache=tmp_path)
    assert first == second == PLAIN
    assert 'style="color:#123456"' in first.replace(" ", "")
    assert len(premailer_calls) == 1
    (kept,) = (tmp_path / "inline").iterdir()
    assert kept.read_text(encoding="utf-8") == first


def test_a_changed_document_is_inlined_again(tmp_path, premailer_calls):
    render.inline_css(DOC, cache=tmp_path)
    changed = render.inline_css(DOC.replace("#123456", "#654321"), cache=tmp_path)
    assert len(premailer_calls) == 2 and "#654321" in changed


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, premailer_calls):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert render.inline_css(DOC, cache=blocked) == PLAIN
    assert render.inline_css(DOC, cache=blocked) == PLAIN
    assert len(premailer_calls) == 2


def test_only_the_most_recently_used_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "INLINED_KEPT", 3)
    documents = [DOC.replace("Listen first.", f"Issue {n}") for n in range(5)]
    for document in documents:
        render.inline_css(document, cache=tmp_path)
    kept = {p.stem for p in (tmp_path / "inline").iterdir()}
    assert len(kept) == 3 and render._inline_key(documents[-1]) in kept


def test_a_second_build_of_an_unchanged_issue_does_not_load_premailer(sample_letter):
    code = ("import sys; from newsletter import build, config; "
            "build.build(config.load('newsletter.toml', environ={}), None); "
            "print('premailer' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=sample_letter, capture_output=True,
                           text=True, check=True).stdout.split()[-1] for _ in range(2)]
    assert runs == ["True", "False"]
