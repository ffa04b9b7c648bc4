"""The SSH gateway: ``ssh``, ``scp``, ``sftp`` and ``-L`` forwards into each user's own server.

A hub-managed service (``services.add_ssh_gateway``), on asyncssh. The pure decisions
(login names, tokens, failed-login limits, what a forward may reach, what runs in the
container) are in ``policy.py``; the engine's exec streams in ``engine.py``; the hub's
API in ``hub.py``; the registered keys in ``keys.py`` and their page in ``page.py``;
the sessions in ``gateway.py``; the service in ``app.py``.
"""
