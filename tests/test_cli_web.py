"""`newsletter serve`'s first line, in-process: the server is made for real, then stopped
instead of served."""

from __future__ import annotations

import socket

import pytest

from .conftest import BASIC_TOML


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(letter, monkeypatch, cli):
    """serve(site_url) -> the output of `newsletter serve`, stopped as soon as it listens."""
    from newsletter.web import app as web_app

    def stop_at_once(server, app) -> None:
        server.close()
        app.close()

    monkeypatch.setattr(web_app, "run", stop_at_once)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{letter / 'newsletter.db'}")

    def serve(site_url: str, port: int):
        toml = BASIC_TOML.replace('"https://letter.example.com"', f'"{site_url}"')
        (letter / "newsletter.toml").write_text(toml)
        (letter / ".env").write_text("NEWSLETTER_SECRET=serve-secret\n")
        return cli("serve", "--port", str(port))

    return serve


def test_serve_names_the_address_once_when_site_url_is_where_it_listens(served):
    port = free_port()
    result = served(f"http://127.0.0.1:{port}", port)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"serving at http://127.0.0.1:{port}/  (Ctrl-C to stop)", "stopped"]


def test_serve_names_the_site_and_where_it_listens_behind_a_proxy(served):
    port = free_port()
    result = served("https://letter.example.com", port)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"serving https://letter.example.com at http://127.0.0.1:{port}/  (Ctrl-C to stop)")
