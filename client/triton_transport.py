"""The client library's thin I/O layer to one Triton: tritonclient's client for the metadata, readiness and
tokenize calls, and the embedding calls' own sender (grpc_inference.py / http_inference.py). triton_client.py
plans, batches, retries and maps errors on top of it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Transport:
    """The thin I/O layer: one tritonclient client (or one per thread) for the metadata, readiness and
    tokenize calls, and a sender of its own (grpc_inference.py / http_inference.py) for the embedding
    calls. Each method returns tritonclient's answer as is: a value for the sync clients, a coroutine
    for the asyncio ones."""

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        grpc: bool,
        timeout_s: float,
        gevent: bool = False,
        sender_factory: Callable[[], Any],
    ) -> None:
        self._factory = factory
        # The embedding calls' own sender (grpc_inference.py / http_inference.py), made on first use like the
        # client: a callable taking a built request, with a close().
        self._sender_factory = sender_factory
        self._sender: Any = None
        # gRPC takes a deadline per call and answers protobuf messages unless asked for JSON; the
        # HTTP clients got their timeouts when they were made and answer JSON.
        self._timeout: dict[str, Any] = {"client_timeout": timeout_s} if grpc else {}
        self._json: dict[str, Any] = {"as_json": True, **self._timeout} if grpc else {}
        # The sync HTTP client runs on gevent, whose sockets belong to the thread (hub) that made
        # them: such clients are made one per thread.
        self._gevent = gevent
        self._local = threading.local()
        self._shared: Any = None
        self._clients: list[Any] = []
        self._hubs: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if not self._gevent:
            if self._shared is None:
                with self._lock:
                    if self._shared is None:
                        self._shared = self._factory()
                        self._clients.append(self._shared)
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:
            import gevent

            client = self._local.client = self._factory()
            with self._lock:
                self._clients.append(client)
                self._hubs.append((threading.current_thread(), gevent.get_hub()))
        return client

    def repository_index(self) -> Any:
        return self.client.get_model_repository_index(**self._json)

    def model_config(self, model: str) -> Any:
        return self.client.get_model_config(model, **self._json)

    def model_ready(self, model: str) -> Any:
        return self.client.is_model_ready(model, **self._timeout)

    def infer(self, model: str, inputs: list[Any], outputs: list[Any]) -> Any:
        return self.client.infer(model, inputs, outputs=outputs, **self._timeout)

    def infer_message(self, request: Any) -> Any:
        """A built request (a ModelInferRequest, an HttpInferRequest) sent by this transport's sender;
        InferAnswer (http_inference.py) or tritonclient's InferResult (gRPC) back."""
        return self.sender()(request)

    def sender(self) -> Any:
        """The sender of the embedding calls (grpc_inference.py, http_inference.py), made on first use."""
        sender = self._sender
        if sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = self._sender_factory()
                sender = self._sender
        return sender

    def drop_connections(self) -> list[Any]:
        """Close tritonclient's shared client (made again on next use) and the sender's kept-alive connections;
        what the client's close() returned (a coroutine for asyncio)."""
        with self._lock:
            shared, self._shared = self._shared, None
            if shared is not None:
                self._clients.remove(shared)
            sender = self._sender
        if sender is not None:
            sender.reset()
        return [shared.close()] if shared is not None else []

    def close(self) -> list[Any]:
        """Closes every client; returns what their close() returned (coroutines for asyncio)."""
        with self._lock:
            clients, self._clients = self._clients, []
            hubs, self._hubs = self._hubs, []
            self._shared = None
            self._local = threading.local()
            sender, self._sender = self._sender, None
        closed = [client.close() for client in clients]
        if sender is not None:
            closed.append(sender.close())  # a coroutine for the asyncio senders
        # The gevent hub of a thread that has exited (the sync client's pool threads, joined before
        # this) would keep its event loop's file descriptors: destroy it.
        for thread, hub in hubs:
            if not thread.is_alive():
                hub.destroy()
        return closed
