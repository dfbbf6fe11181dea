"""The web side. :mod:`.preview` is the writer's live preview on 127.0.0.1; :mod:`.app` is
the public site (sign-up, confirmation, unsubscribe, webhooks, archive, feed), built from
:mod:`.signup`, :mod:`.webhooks` and :mod:`.archive`. Both share :mod:`.http`."""
