"""The ClientApp Flower runs for each message a site receives.

Under ``baps-fed site`` the node config names the site's long-lived process
(``site-worker``): the message is relayed there, where the FM, the data and the decoder are
built once (``sites/worker.py``, reached through ``sites/relay.py``); this process then
never imports torch.
Elsewhere (Flower's simulation runtime, a plain ``flower-supernode``) the site's ClientApp
(``sites/site_app.py``) runs here, in this process.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from baps_fed.federation.worker_address import WORKER_KEY
from sites.relay import forward

app = ClientApp()


def _handle(msg: Message, context: Context) -> Message:
    if WORKER_KEY in context.node_config:
        return forward(msg, context)
    from sites.site_app import site_app  # torch, the FM: only where the site computes

    return site_app(msg, context)


app.train()(_handle)
app.evaluate()(_handle)
