"""Drive a ServerApp against ClientApps in this process: a Grid that delivers each message by
calling the ClientApp directly (Flower's own runtimes are exercised by the integration tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid


class LoopbackGrid(Grid):
    def __init__(self, client_app: ClientApp, node_configs: dict[int, dict], run_config: dict):
        self.client_app = client_app
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config=run_config
            )
            for node, cfg in node_configs.items()
        }
        self.down: set[int] = set()  # nodes that stopped answering
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.on_deliver: Callable[[Message], None] | None = None
        self.on_reply: Callable[[Message], Message] | None = None
        self._waiting: dict[str, Message] = {}  # replies not yet pulled, by message id

    def set_run(self, run) -> None:  # pragma: no cover - not used in-process
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated in Flower
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.down]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; its reply waits for ``pull_messages``."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            self.sent.append(msg)
            reply = self._deliver(msg)
            if reply is not None:
                self._waiting[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._waiting.pop(i) for i in list(message_ids) if i in self._waiting]

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None) -> list[Message]:
        return list(self.pull_messages(self.push_messages(messages)))

    def _deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        if self.on_deliver:  # may take nodes down, this one included
            self.on_deliver(msg)
        if node in self.down:
            return None  # as after a timeout: no reply
        try:
            reply = self.client_app(msg, self.contexts[node])
        except Exception as ex:  # as Flower's runtimes do: an error reply, the run goes on
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=reason), reply_to=msg)
        if self.on_reply:  # may replace the reply (a site turned malicious)
            reply = self.on_reply(reply)
        self.replies.append(reply)
        return reply
