"""The SMTP adapter against real local SMTP servers: aiosmtpd, and Postfix's smtp-sink."""

from __future__ import annotations

import email
import smtplib
import socket
import threading
from email import policy

import pytest

from newsletter import build
from newsletter.message import MessageTemplate
from newsletter.providers import Batch, Envelope, FatalError, TransientError, get_provider

from . import smtpsink
from .fakes.smtp import (
    Authenticator,
    CramMd5Sink,
    Sink,
    port_of,
    self_signed_context,
    start_auth_sink,
    start_sink,
)
from .provider_util import batch_of

# The fake requires AUTH over plain TCP, which aiosmtpd warns about at every connection.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


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
    assert ".hidden<br>\n..two<br>\n.</div>" in html  # lines that begin with dots, as written


# -- logging in with UTF-8 credentials (RFC 4616: PLAIN carries UTF-8) -----------------------


@pytest.mark.parametrize(("excluded", "used"), [([], "PLAIN"), (["PLAIN"], "LOGIN")])
def test_a_utf8_password_logs_in(excluded, used, configure, sample_issue):
    controller, sink, auth = start_auth_sink("brev-ö", "pässwörd", auth_exclude_mechanism=excluded)
    try:
        provider, template = smtp_provider(configure, sample_issue, port_of(controller),
                                           'username = "brev-ö"\n', env={"SMTP_PASSWORD": "pässwörd"})
        outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))
        provider.close()
    finally:
        controller.stop()
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [m[1] for m in sink.messages] == [["a@example.com"], ["b@example.com"]]
    assert auth.mechanisms == [used]  # PLAIN when offered, else LOGIN; once per connection


def test_a_wrong_utf8_password_is_fatal_and_never_shown(configure, sample_issue):
    controller, sink, _ = start_auth_sink("letter", "pässwörd")
    try:
        provider, template = smtp_provider(configure, sample_issue, port_of(controller),
                                           'username = "letter"\n', env={"SMTP_PASSWORD": "pässwörd-fel"})
        with pytest.raises(FatalError) as caught:
            provider.send_batch(batch_of(template, ["a@example.com"]))
    finally:
        controller.stop()
    message = str(caught.value)
    assert "\n" not in message and "login as letter refused" in message and "SMTP_PASSWORD" in message
    assert "pässwörd" not in message and "fel" not in message
    assert caught.value.partial == [] and sink.messages == []


def test_cram_md5_alone_goes_through_smtplib_and_a_non_ascii_password_is_a_clear_error(
        configure, sample_issue):
    for password, works in (("right", True), ("pässwörd", False)):
        controller, sink = start_sink(CramMd5Sink("letter", password), auth_require_tls=False,
                                      auth_required=True, auth_exclude_mechanism=["PLAIN", "LOGIN"])
        try:
            provider, template = smtp_provider(configure, sample_issue, port_of(controller),
                                               'username = "letter"\n', env={"SMTP_PASSWORD": password})
            if works:
                assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
                provider.close()
                continue
            with pytest.raises(FatalError) as caught:
                provider.send_batch(batch_of(template, ["a@example.com"]))
        finally:
            controller.stop()
        message = str(caught.value)
        assert "SMTP_PASSWORD" in message and "CRAM-MD5" in message and "\n" not in message
        assert password not in message and sink.messages == []


def test_a_password_that_is_not_text_is_a_clear_error(configure, sample_issue):
    # os.environ keeps bytes that are not UTF-8 as lone surrogates
    controller, sink, _ = start_auth_sink("letter", "pässwörd")
    try:
        provider, template = smtp_provider(configure, sample_issue, port_of(controller),
                                           'username = "letter"\n', env={"SMTP_PASSWORD": "p\udce4ss"})
        with pytest.raises(FatalError, match="SMTP_PASSWORD is not valid UTF-8"):
            provider.send_batch(batch_of(template, ["a@example.com"]))
    finally:
        controller.stop()


def test_a_server_that_wants_a_login_says_so(configure, sample_issue):
    controller, sink, _ = start_auth_sink("letter", "pässwörd")
    try:
        provider, template = smtp_provider(configure, sample_issue, port_of(controller))
        with pytest.raises(FatalError) as caught:
            provider.send_batch(batch_of(template, ["a@example.com"]))
    finally:
        controller.stop()
    assert "530" in str(caught.value) and "[provider] username" in str(caught.value)
    assert "SMTP_PASSWORD" in str(caught.value)


# -- nothing that failed before the end of DATA is "unknown" ---------------------------------


def test_an_unexpected_error_while_reconnecting_keeps_what_was_sent(server, configure, sample_issue,
                                                                   monkeypatch):
    port, sink = server
    sink.per_connection = 1  # so the second message needs a new connection
    # smtplib names this machine in EHLO from getfqdn(), and sends that name as ASCII
    real, client = socket.getfqdn, threading.current_thread()
    monkeypatch.setattr(smtplib.socket, "getfqdn", lambda *a: real(*a) if threading.current_thread()
                        is not client or not sink.messages else "pöst.example")
    provider, template = smtp_provider(configure, sample_issue, port)
    with pytest.raises((TransientError, FatalError)) as caught:  # never a UnicodeEncodeError
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent")]
    assert "UnicodeEncodeError" in str(caught.value) and "\n" not in str(caught.value)
    assert [m[1] for m in sink.messages] == [["a@example.com"]]


def test_a_message_that_cannot_be_made_fails_alone(server, configure, sample_issue):
    port, sink = server
    provider, template = smtp_provider(configure, sample_issue, port)
    good = batch_of(template, ["a@example.com", "b@example.com", "c@example.com"])
    bad = Envelope(2, good.envelopes[1].recipient, good.envelopes[1].unsubscribe_url, "<x\r\nBcc: evil@example.com>")
    batch = Batch(template, [good.envelopes[0], bad, good.envelopes[2]], good.idempotency_key)
    outcomes = provider.send_batch(batch)
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert "Message-ID" in outcomes[1].reason
    assert [m[1] for m in sink.messages] == [["a@example.com"], ["c@example.com"]]


def test_a_timeout_before_data_is_a_refusal_not_unknown(server, configure, sample_issue):
    port, sink = server
    sink.stall_rcpt = {"b@example.com": 3}
    config = configure(f'name = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout = 0.4\n')
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    provider = get_provider(config)
    with pytest.raises(TransientError, match="timed out") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent")]
    assert [m[1] for m in sink.messages] == [["a@example.com"]]


# -- per-recipient temporary refusals, and 421 ----------------------------------------------


def test_a_greylisted_recipient_is_retried_alone(server, configure, sample_issue):
    port, sink = server
    sink.greylist = {"grey@example.com": 1}
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "grey@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "retry", "sent"]
    assert outcomes[1].reason.startswith("451 4.7.1")
    again = provider.send_batch(batch_of(template, ["grey@example.com"]))
    assert [o.status for o in again] == ["sent"]
    assert [m[1] for m in sink.messages] == [["a@example.com"], ["c@example.com"], ["grey@example.com"]]


def test_refusals_after_the_body(server, configure, sample_issue):
    port, sink = server
    sink.data_rules = {"full@example.com": "452 4.3.1 Insufficient system storage",
                       "spam@example.com": "554 5.7.1 Message refused"}
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["full@example.com", "spam@example.com", "ok@example.com"]))
    assert [o.status for o in outcomes] == ["retry", "failed", "sent"]
    assert outcomes[0].reason.startswith("452") and outcomes[1].reason.startswith("554")
    assert [m[1] for m in sink.messages] == [["ok@example.com"]]


def test_552_to_rcpt_is_temporary(server, configure, sample_issue):
    # RFC 5321 4.5.3.1.10: clients should read a 552 to RCPT as "too many recipients", for now
    port, sink = server
    sink.rules = {"many@example.com": "552 5.5.3 Too many recipients"}
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["many@example.com", "ok@example.com"]))
    assert [o.status for o in outcomes] == ["retry", "sent"]


def test_421_at_a_per_connection_limit_reconnects(server, configure, sample_issue):
    port, sink = server
    sink.per_connection = 2
    before = sink.connections
    provider, template = smtp_provider(configure, sample_issue, port)
    addresses = [f"r{i}@example.com" for i in range(5)]
    outcomes = provider.send_batch(batch_of(template, addresses))
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert [m[1][0] for m in sink.messages] == addresses
    assert sink.connections - before == 3


def test_421_shutting_down_mid_batch(server, configure, sample_issue):
    port, sink = server
    sink.shut_down_after = 2
    provider, template = smtp_provider(configure, sample_issue, port)
    with pytest.raises(TransientError, match="421") as caught:
        provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(4)]))
    # the two accepted are sent; the two never accepted are covered by the TransientError
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "sent")]
    assert len(sink.messages) == 2


def test_421_after_the_body_is_retry_and_the_connection_is_not_reused(server, configure, sample_issue):
    port, sink = server
    sink.data_rules = {"b@example.com": "421 4.3.2 Service shutting down"}
    before = sink.connections
    provider, template = smtp_provider(configure, sample_issue, port)
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "retry", "sent"]
    assert [m[1] for m in sink.messages] == [["a@example.com"], ["c@example.com"]]
    assert sink.connections - before == 2


def test_the_next_envelope_goes_with_the_body_one_write_per_message(server, configure, sample_issue,
                                                                    monkeypatch):
    # RFC 2920 3.1: message content may open a group, so the next MAIL, RCPT and DATA go in
    # the same write as this body's final dot; one by one, every command is a write of its own
    port, sink = server
    writes = []
    real_send = smtplib.SMTP.send
    monkeypatch.setattr(smtplib.SMTP, "send", lambda self, s: (writes.append(s), real_send(self, s))[1])
    provider, template = smtp_provider(configure, sample_issue, port)
    writes.clear()  # EHLO is sent when the first message needs the connection
    addresses = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    outcomes = provider.send_batch(batch_of(template, addresses))
    provider.close()
    assert [o.status for o in outcomes] == ["sent"] * 4
    assert [m[1][0] for m in sink.messages] == addresses
    sent = [w.encode() if isinstance(w, str) else w for w in writes]  # docmd writes text
    sent = [w for w in sent if not w.lower().startswith((b"ehlo", b"quit"))]
    if sink.pipelining:
        assert len(sent) == len(addresses) + 1
        assert sent[1].endswith(b"\r\n.\r\nMAIL FROM:<ann@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert sent[-1].endswith(b"\r\n.\r\n")  # nothing sent ahead past the batch's last message
    else:
        assert len(sent) == 4 * len(addresses)


# -- Postfix's smtp-sink: a server written by others that reads pipelined commands in bulk --

needs_smtp_sink = pytest.mark.skipif(smtpsink.find() is None, reason=smtpsink.INSTALL)


def _at_postfix(configure, sample_issue, sink, addresses):
    provider, template = smtp_provider(configure, sample_issue, sink.port)
    try:
        return provider, provider.send_batch(batch_of(template, addresses))
    finally:
        provider.close()


@needs_smtp_sink
def test_pipelined_messages_arrive_whole_at_postfixs_sink(configure, sample_issue):
    addresses = [f"reader{i}@example.com" for i in range(1, 26)]
    with smtpsink.running() as sink:
        provider, outcomes = _at_postfix(configure, sample_issue, sink, addresses)
        dumped = sink.dumped(len(addresses))
    assert [o.status for o in outcomes] == ["sent"] * len(addresses)
    assert sorted(d.recipients[0] for d in dumped) == sorted(addresses)
    assert all(len(d.recipients) == 1 for d in dumped)
    for d in dumped:  # each copy whole, and each reader's own
        i = addresses.index(d.recipients[0]) + 1
        assert d.message["To"] == f"Reader {i} <reader{i}@example.com>"
        assert d.message["Subject"] == "Sälj väl"
        text = d.message.get_body(("plain",)).get_content()
        assert f"https://letter.example.com/unsubscribe/t{i}\n" in text
        assert "Sell well" in text


@needs_smtp_sink
def test_a_server_that_hangs_up_after_the_final_dot_leaves_each_message_unknown_once(configure, sample_issue):
    # `-q .`: the sink takes the message, then closes without a reply, with the next
    # message's envelope already written to it
    addresses = ["a@example.com", "b@example.com", "c@example.com"]
    with smtpsink.running("-q", ".") as sink:
        _, outcomes = _at_postfix(configure, sample_issue, sink, addresses)
        dumped = sink.dumped(len(addresses))
    assert [o.status for o in outcomes] == ["unknown"] * 3
    assert all("connection lost while sending" in o.reason for o in outcomes)
    # taken once each: the envelope sent ahead did not become a message of its own
    assert sorted(d.recipients[0] for d in dumped) == addresses


@needs_smtp_sink
def test_421_to_the_final_dot_drops_the_envelope_sent_ahead(configure, sample_issue):
    # `-Q .`: 421 to every final dot, then the sink hangs up; each next message starts again
    # on a new connection, and none of them is taken as sent
    addresses = ["a@example.com", "b@example.com", "c@example.com"]
    with smtpsink.running("-Q", ".") as sink:
        _, outcomes = _at_postfix(configure, sample_issue, sink, addresses)
    assert [o.status for o in outcomes] == ["retry"] * 3
    assert all(o.reason.startswith("421") for o in outcomes)
