"""Webhook requests as each email service signs them, with keys made for the test.

* SendGrid: an ECDSA P-256 key pair; the public key as SendGrid shows it (base64 DER), the
  signature base64 DER over ``timestamp + body``.
* Mailgun: an HMAC-SHA256 signing key over ``timestamp + token``, inside the JSON body (and,
  for a subaccount's event, ``parent-signature`` with the primary account's key).
* Resend: a Svix ``whsec_`` secret; ``v1,`` base64 HMAC-SHA256 over ``id.timestamp.body``,
  under the ``svix-*`` or the Standard Webhooks ``webhook-*`` header names.
* Postmark: basic-auth credentials.
* SES: a test certificate authority and an SNS signing certificate it issued, served by a
  local HTTP server standing in for the SNS certificate host; messages signed with
  SignatureVersion 2 (RSA, SHA-256) over SNS's canonical string.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from .httpbase import FakeService, Reply, Request

SNS_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:newsletter-ses"


def postmark_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


class SendgridSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


class MailgunSigner:
    def __init__(self) -> None:
        self.key = "key-" + os.urandom(16).hex()

    def sign(self, stamp: str, token: str) -> str:
        return hmac.new(self.key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()

    def body(self, event_data: dict[str, Any], timestamp: int | None = None, *, token: str | None = None,
             parent: MailgunSigner | None = None) -> bytes:
        """A webhook body; with ``parent``, as a subaccount's event: ``parent-signature``
        made with the primary account's key beside this (sub)account's ``signature``."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        token = token or os.urandom(25).hex()
        signature = {"timestamp": stamp, "token": token, "signature": self.sign(stamp, token)}
        if parent is not None:
            signature["parent-signature"] = parent.sign(stamp, token)
        return json.dumps({"signature": signature, "event-data": event_data}).encode()


class SvixSigner:
    def __init__(self) -> None:
        self.raw = os.urandom(24)
        self.secret = "whsec_" + base64.b64encode(self.raw).decode()

    def headers(self, body: bytes, msg_id: str | None = None, timestamp: int | None = None,
                prefix: str = "svix") -> dict[str, str]:
        """Signed headers under Svix's names, or with ``prefix="webhook"`` the Standard
        Webhooks names for the same scheme."""
        msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(self.raw, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "Content-Type": "application/json",
            f"{prefix}-id": msg_id,
            f"{prefix}-timestamp": stamp,
            f"{prefix}-signature": f"v1,{base64.b64encode(b'not-it').decode()} v1,{base64.b64encode(digest).decode()}",
        }


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class SnsSigner:
    """A test CA, an SNS signing certificate it issued, and messages signed with it."""

    def __init__(self, topic_arn: str = TOPIC_ARN, cert_url: str = SNS_CERT_URL) -> None:
        now = dt.datetime.now(dt.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca = (
            x509.CertificateBuilder().subject_name(_name("Test SNS CA")).issuer_name(_name("Test SNS CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("sns.amazonaws.com")).issuer_name(self.ca.subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(ca_key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.topic_arn = topic_arn
        self.cert_url = cert_url

    def message(self, notification: dict[str, Any] | None = None, *, kind: str = "Notification",
                timestamp: dt.datetime | None = None, **override: Any) -> dict[str, Any]:
        stamp = (timestamp or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        m: dict[str, Any] = {
            "Type": kind, "MessageId": str(uuid.uuid4()), "TopicArn": self.topic_arn,
            "Timestamp": stamp, "SignatureVersion": "2", "SigningCertURL": self.cert_url,
        }
        if kind == "Notification":
            m["Message"] = json.dumps(notification or {})
            m["UnsubscribeURL"] = "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe"
        else:
            m["Message"] = "You have chosen to subscribe to the topic."
            m["Token"] = os.urandom(16).hex()
            m["SubscribeURL"] = f"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token={m['Token']}"
        m.update(override)
        m["Signature"] = self.signature(m)
        return m

    def signature(self, m: dict[str, Any]) -> str:
        fields = (("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
                  if m["Type"] == "Notification" else
                  ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"))
        text = "".join(f"{f}\n{m[f]}\n" for f in fields if f in m)
        signed = self.key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signed).decode()


class CertificateHost(FakeService):
    """A local stand-in for the SNS certificate host: serves PEM files by path."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}

    def start(self) -> CertificateHost:
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def dispatch(self, request: Request) -> Reply:
        data = self.files.get(request.path)
        if data is None:
            return Reply(404, "not found")
        return Reply(200, data, {"Content-Type": "application/x-pem-file"})

    def fetch(self, url: str) -> bytes:
        """The transport the certificate cache uses in tests: the AWS URL's path, asked of
        this local server (the URL itself has been checked by the code under test)."""
        response = requests.get(self.url + urlsplit(url).path, timeout=5)
        response.raise_for_status()
        return response.content
