"""The SMTP adapter against a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import socket
from email import policy

import pytest

from newsletter import build
from newsletter.message import MessageTemplate
from newsletter.providers import FatalError, TransientError, get_provider

from .fakes.smtp import Authenticator, Sink, port_of, self_signed_context, start_sink
from .provider_util import batch_of


@pytest.fixture(params=["one by one", "pipelined"])
def server(request):
    controller, sink = start_sink()
    sink.pipelining = request.param == "pipelined"
    yield port_of(controller), sink
    controller.stop()


def smtp_provider(configure, sample_issue, port, extra="", env=None):
    config = configure(f'name = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout = 5\n{extra}', env=env)
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    return get_provider(config), template


def test_messages_arrive_whole_over_one_connection(server, configure, sample_issue):
    port, sink = server
    before = sink.connections  # the server's own start-up probe
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org", "c@example.net"]))
    provider.close()
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert [m[1] for m in sink.messages] == [["a@example.com"], ["b@example.org"], ["c@example.net"]]
    assert all(m[0] == "ann@example.com" for m in sink.messages)
    msg = email.message_from_bytes(sink.messages[0][2], policy=policy.default)
    assert msg["To"] == "Reader 1 <a@example.com>"
    assert msg["Subject"] == "Sälj väl"
    assert msg["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t1>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_body(("plain",)).get_content().count("https://letter.example.com/unsubscribe/t1") == 1
    assert sink.connections - before == 1


def test_refusals_are_per_recipient(server, configure, sample_issue):
    port, sink = server
    sink.rules = {"later@example.com": "450 4.2.0 Mailbox busy", "nobody@example.com": "550 5.1.1 No such user"}
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["later@example.com", "nobody@example.com", "ok@example.com"]))
    assert [o.status for o in outcomes] == ["retry", "failed", "sent"]
    assert outcomes[0].reason.startswith("450") and outcomes[1].reason.startswith("550")
    assert [m[1] for m in sink.messages] == [["ok@example.com"]]


def test_connection_lost_during_data_is_unknown_and_the_rest_go_on(server, configure, sample_issue):
    port, sink = server
    sink.drop_data_for = {"b@example.com"}
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "unknown", "sent"]
    assert len(sink.messages) == 3  # b's message did arrive: that is why it is unknown, not retried


def test_reconnects_after_the_server_closes_the_connection(server, configure, sample_issue):
    port, sink = server
    sink.close_after_each = True
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert len(sink.messages) == 3 and sink.connections >= 2


def test_no_server_is_transient(configure, sample_issue):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider, template = smtp_provider(configure, sample_issue, port)
    with pytest.raises(TransientError, match=f"smtp 127.0.0.1:{port}: cannot connect"):
        provider.send_batch(batch_of(template, ["a@example.com"]))


def test_login_and_refused_login(configure, sample_issue):
    sink = Sink()
    controller, _ = start_sink(sink, authenticator=Authenticator("letter", "right"), auth_require_tls=False)
    try:
        port = port_of(controller)
        provider, template = smtp_provider(configure, sample_issue, port, 'username = "letter"\n', env={"SMTP_PASSWORD": "right"})
        assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
        provider.close()
        provider, template = smtp_provider(configure, sample_issue, port, 'username = "letter"\n', env={"SMTP_PASSWORD": "wrong"})
        with pytest.raises(FatalError) as caught:
            provider.send_batch(batch_of(template, ["a@example.com"]))
        assert "login as letter refused" in str(caught.value) and "SMTP_PASSWORD" in str(caught.value)
        assert "wrong" not in str(caught.value)
    finally:
        controller.stop()


def test_starttls(tmp_path, configure, sample_issue):
    context = self_signed_context(tmp_path)
    controller, sink = start_sink(tls_context=context, require_starttls=True)
    try:
        port = port_of(controller)
        config = configure(f'name = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "starttls"\nverify_tls = false\n')
        template = MessageTemplate(config, build.render(config, sample_issue), "main")
        provider = get_provider(config)
        assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
        assert "starttls" in provider.check()
        # without TLS the server refuses to go on
        plain = configure(f'name = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n')
        with pytest.raises((FatalError, TransientError)):
            get_provider(plain).send_batch(batch_of(template, ["a@example.com"]))
    finally:
        controller.stop()
    assert len(sink.messages) == 1


def test_pipelining_is_used_when_offered(server, configure, sample_issue):
    port, sink = server
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com"]))
    assert [o.status for o in outcomes] == ["sent"]
    (conn,) = provider._all
    assert conn.has_extn("pipelining") is sink.pipelining
    provider.close()


def test_a_body_with_lines_starting_with_a_dot_arrives_intact(server, configure, sample_issue, write):
    port, sink = server
    write(f"issues/{sample_issue}/03-dots.md", "---\ntitle: Dots\n---\n```\n.hidden\n..two\n.\n```\n")
    provider, template = smtp_provider(configure, sample_issue, port)
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
    msg = email.message_from_bytes(sink.messages[0][2], policy=policy.default)
    text = msg.get_body(("plain",)).get_content()
    assert "    .hidden\n    ..two\n    ." in text.replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert ".hidden\n..two\n.\n</code>" in html  # lines that begin with dots, as written
