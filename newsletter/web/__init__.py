"""The web side: the live preview now; the public pages (subscribe, confirm, unsubscribe,
webhooks, archive) share :mod:`newsletter.web.http`."""
