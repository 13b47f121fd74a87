"""CORS as the NEAR server answers it (Express ``cors()``, near-protocols.md §9): every answer
carries ``Access-Control-Allow-Origin: *``, and a preflight answers 204 allowing whatever request
headers it asks for. Open CORS is safe here: no route reads cookies or any ambient credential."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]


class OpenCors(CORSMiddleware):
    def __init__(self, app: ASGIApp, expose_headers: list[str], max_age: int = 86400) -> None:
        super().__init__(
            app,
            allow_origins=["*"],
            allow_methods=METHODS,
            allow_headers=["*"],  # the requested ones are echoed back
            expose_headers=expose_headers,
            max_age=max_age,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 200:
            return answer
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
        return Response(status_code=204, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or Headers(scope=scope).get("origin") is not None:
            await super().__call__(scope, receive, send)
            return

        async def with_origin_header(message: Message) -> None:  # no Origin: Starlette adds nothing
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k == b"access-control-allow-origin" for k, _ in headers):
                    headers.append((b"access-control-allow-origin", b"*"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_origin_header)
