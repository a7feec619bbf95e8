"""fetch: an outbound GET to the url in the query, answering the upstream's status and body.

GET /?url=<percent-encoded absolute url> -> an outbound GET through poll_loop.send (over
wasi:http/outgoing-handler) -> 200 "status=<code>\n" + the upstream's body. An outbound error ->
502 "outbound error: <ErrorCode>" (e.g. ErrorCode_HttpRequestDenied() for a host the manifest
does not grant). A missing or relative url -> 400.
"""

import asyncio
from urllib import parse

import poll_loop
from componentize_py_types import Err, Ok
from poll_loop import PollLoop, Sink, Stream
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
    Scheme_Other,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        loop = PollLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(handle_async(request, response_out))


async def respond(response_out: ResponseOutparam, status: int, chunks) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    sink = Sink(response.body())
    ResponseOutparam.set(response_out, Ok(response))
    for chunk in chunks:
        await sink.send(chunk)
    sink.close()


async def handle_async(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    query = parse.urlsplit(request.path_with_query() or "/").query
    urls = parse.parse_qs(query).get("url")
    target = parse.urlsplit(urls[0]) if urls else None
    if target is None or target.scheme == "" or target.netloc == "":
        await respond(response_out, 400, [b"usage: GET /?url=<percent-encoded absolute url>\n"])
        return

    outgoing = OutgoingRequest(Fields.from_list([]))
    outgoing.set_scheme(
        Scheme_Http() if target.scheme == "http"
        else Scheme_Https() if target.scheme == "https"
        else Scheme_Other(target.scheme)
    )
    outgoing.set_authority(target.netloc)
    outgoing.set_path_with_query(target.path + ("?" + target.query if target.query else "") or "/")

    try:
        upstream = await poll_loop.send(outgoing)
    except Err as e:
        await respond(response_out, 502, [f"outbound error: {e.value}\n".encode()])
        return

    status = upstream.status()
    stream = Stream(upstream.consume())
    chunks = [f"status={status}\n".encode()]
    while (chunk := await stream.next()) is not None:
        chunks.append(chunk)
    await respond(response_out, 200, chunks)
