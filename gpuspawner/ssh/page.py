"""The gateway's page on the hub: a user's SSH keys, and how to log in.

At ``/services/gpu-ssh/`` for every user of the hub (``access:services!service=gpu-ssh``,
which ``services.add_ssh_gateway`` grants), in the hub's own look (its stylesheet and
logo). A key is added or removed with a plain form carrying the hub's ``_xsrf`` token;
``api/keys`` does the same for a script with a token (``Authorization: token ...``).
"""

from __future__ import annotations

import json

import jinja2
from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from markupsafe import Markup
from tornado import web

from .keys import MAX_KEYS, KeyRefused, KeyStore

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SSH keys - JupyterHub</title>
<link rel="stylesheet" href="{{ hub }}static/css/style.min.css">
<link rel="icon" href="{{ hub }}static/favicon.ico">
</head>
<body>
<nav class="navbar navbar-expand-sm bg-body-tertiary mb-4">
 <div class="container-fluid">
  <a class="navbar-brand" href="{{ hub }}home"><img src="{{ hub }}logo" alt="JupyterHub logo" class="jpy-logo" title="Home"></a>
  <ul class="navbar-nav me-auto">
   <li class="nav-item"><a class="nav-link" href="{{ hub }}home">Home</a></li>
   <li class="nav-item"><a class="nav-link" href="{{ hub }}token">Token</a></li>
  </ul>
  <span class="navbar-text">{{ user }}</span>
 </div>
</nav>
<div class="container">
<h1>SSH</h1>
<p>Your own server, in a terminal, with <code>scp</code>, <code>sftp</code>, port forwarding and VS Code Remote-SSH:</p>
<pre id="ssh-command" class="bg-body-tertiary p-2">ssh -p {{ port }} {{ user }}@{{ host }}</pre>
<p>It starts your server with your default profile when none runs
(<code>ssh -p {{ port }} {{ user }}{{ separator }}PROFILE@{{ host }}</code> names another).
Log in with one of your keys below, or with a <a href="{{ hub }}token">token</a> of yours as the password.
The gateway's host key is <code id="host-key">{{ host_key }}</code>: check it the first time you connect.</p>
{% if error %}<div class="alert alert-danger" role="alert" id="error">{{ error }}</div>{% endif %}
{% if added %}<div class="alert alert-success" role="alert" id="added">Added {{ added }}.</div>{% endif %}
<h2>Your keys</h2>
{% if keys %}
<table class="table" id="keys">
<thead><tr><th>Type</th><th>Fingerprint</th><th>Comment</th><th>Added</th><th></th></tr></thead>
<tbody>
{% for k in keys %}
<tr><td>{{ k.algorithm }}</td><td><code>{{ k.fingerprint }}</code></td><td>{{ k.comment }}</td><td>{{ k.added }}</td>
<td><form method="post" action="{{ prefix }}keys/remove">{{ xsrf }}
<input type="hidden" name="fingerprint" value="{{ k.fingerprint }}">
<button type="submit" class="btn btn-sm btn-danger">Remove</button></form></td></tr>
{% endfor %}
</tbody>
</table>
{% else %}<p id="no-keys">None yet.</p>{% endif %}
<h2>Add a key</h2>
<form method="post" action="{{ prefix }}keys">{{ xsrf }}
<div class="mb-3">
<label for="key" class="form-label">Your public key: the one line of <code>~/.ssh/id_ed25519.pub</code>
(make one with <code>ssh-keygen -t ed25519</code>). Never the private key. At most {{ max_keys }} keys.</label>
<textarea class="form-control font-monospace" id="key" name="key" rows="3" placeholder="ssh-ed25519 AAAA... you@laptop"></textarea>
</div>
<button type="submit" class="btn btn-primary">Add</button>
</form>
</div>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True)
_PAGE = _ENV.from_string(TEMPLATE)


class _Handler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, gateway_app):
        self.app = gateway_app
        self.hub_auth = gateway_app.hub_auth

    @property
    def keys(self) -> KeyStore:
        return self.app.keys

    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        hub = self.hub_auth.hub_host or "'self'"
        self.set_header(
            "Content-Security-Policy",
            f"default-src 'none'; style-src {hub}; img-src {hub}; form-action 'self'; frame-ancestors 'none'",
        )

    def render_page(self, error: str = "", added: str = "", status: int = 200) -> None:
        user = self.current_user["name"]
        host = self.app.public_host or (self.request.host or "").rsplit(":", 1)[0] or "HUB"
        self.set_status(status)
        self.write(
            _PAGE.render(
                hub=self.hub_auth.hub_host + self.hub_auth.hub_prefix,
                prefix=self.app.service_prefix,
                user=user,
                host=host,
                port=self.app.port,
                separator=self.app.profile_separator or "+",
                host_key=self.app.host_key_fingerprint,
                keys=self.keys.keys_of(user),
                error=error,
                added=added,
                max_keys=MAX_KEYS,
                xsrf=Markup(self.xsrf_form_html()),
            )
        )


class PageHandler(_Handler):
    @web.authenticated
    def get(self):
        self.render_page()


class AddKeyHandler(_Handler):
    @web.authenticated
    def post(self):
        user = self.current_user["name"]
        try:
            entry = self.keys.add(user, self.get_body_argument("key", ""))
        except KeyRefused as e:
            return self.render_page(error=str(e), status=400)
        self.app.audit("key added", user=user, key=entry.fingerprint, comment=entry.comment)
        self.render_page(added=f"{entry.algorithm} {entry.fingerprint}")


class RemoveKeyHandler(_Handler):
    @web.authenticated
    def post(self):
        user = self.current_user["name"]
        fingerprint = self.get_body_argument("fingerprint", "")
        if self.keys.remove(user, fingerprint):
            self.app.audit("key removed", user=user, key=fingerprint)
        self.redirect(self.app.service_prefix)


class KeysAPIHandler(_Handler):
    """``GET``: your keys (JSON); ``POST`` a key line: add it; ``DELETE ?fingerprint=SHA256:...``: remove it."""

    def check_xsrf_cookie(self):
        # Who asks first: a request with a token in its header needs no xsrf token (the hub's rule),
        # and tornado checks before anything has looked at the header.
        self.current_user  # noqa: B018
        return super().check_xsrf_cookie()

    def user(self) -> str:
        if self.current_user is None:
            raise web.HTTPError(403, "needs a hub login or a token of yours")
        return self.current_user["name"]

    def _keys(self, user: str) -> list[dict]:
        return [
            {"type": k.algorithm, "fingerprint": k.fingerprint, "comment": k.comment, "added": k.added}
            for k in self.keys.keys_of(user)
        ]

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self._keys(self.user())))

    def post(self):
        user = self.user()
        try:
            entry = self.keys.add(user, self.request.body.decode(errors="replace"))
        except KeyRefused as e:
            raise web.HTTPError(400, str(e)) from None
        self.app.audit("key added", user=user, key=entry.fingerprint, comment=entry.comment)
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"type": entry.algorithm, "fingerprint": entry.fingerprint, "comment": entry.comment}))

    def delete(self):
        user = self.user()
        fingerprint = self.get_query_argument("fingerprint", "")
        if not self.keys.remove(user, fingerprint):
            raise web.HTTPError(404, f"no key {fingerprint} of yours")
        self.app.audit("key removed", user=user, key=fingerprint)
        self.set_status(204)

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "application/json")
        reason = kwargs.get("exc_info", (None, None))[1]
        message = getattr(reason, "log_message", None) or self._reason
        self.finish(json.dumps({"status": status_code, "message": message}))


def handlers(gateway_app) -> list:
    prefix = gateway_app.service_prefix
    route = {"gateway_app": gateway_app}
    return [
        (prefix, PageHandler, route),
        (url_path_join(prefix, "keys"), AddKeyHandler, route),
        (url_path_join(prefix, "keys/remove"), RemoveKeyHandler, route),
        (url_path_join(prefix, "api/keys"), KeysAPIHandler, route),
    ]


__all__ = ["TEMPLATE", "handlers"]
