"""var: reads app variables through wasi:config/store (the manifest's `variables` grant).

GET /<name> -> 200 with the value; 404 "no such variable: <name>" when the manifest does not
grant it; 500 "config error: <e>" on a store error; GET / -> 400 (a name is needed).
"""

from urllib import parse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def respond(response_out: ResponseOutparam, status: int, text: str) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    data = text.encode("utf-8")
    with body.write() as stream:
        # blocking-write-and-flush takes at most 4096 bytes per call
        for i in range(0, len(data), 4096):
            stream.blocking_write_and_flush(data[i : i + 4096])
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = parse.urlsplit(request.path_with_query() or "/").path
        name = parse.unquote(path.lstrip("/"))
        if not name:
            respond(response_out, 400, "usage: GET /<variable name>\n")
            return
        try:
            value = store.get(name)
        except Err as e:
            respond(response_out, 500, f"config error: {e.value}\n")
            return
        if value is None:
            respond(response_out, 404, f"no such variable: {name}\n")
        else:
            respond(response_out, 200, value)
