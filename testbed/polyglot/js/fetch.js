// fetch: an outbound GET to the url in the query, answering the upstream's status and body.
//   GET /?url=<percent-encoded absolute url>     through fetch(), as apps normally do it
//   GET /raw?url=<percent-encoded absolute url>  through the wasi:http/outgoing-handler import
// -> 200 "status=<code>\n" + the upstream's body. An outbound error -> 502 "outbound error: <e>":
// fetch() only says "TypeError: NetworkError when attempting to fetch resource", so /raw exists
// to show the WASI error-code (e.g. {"tag":"HTTP-request-denied"}). A missing or relative url -> 400.
import { handle as send } from 'wasi:http/outgoing-handler@0.2.10';
import { Fields, OutgoingRequest } from 'wasi:http/types@0.2.10';

function text(body, status) {
  return new Response(body, { status, headers: { 'content-type': 'text/plain' } });
}

async function viaFetch(url) {
  const upstream = await fetch(url);
  return { status: upstream.status, body: await upstream.text() };
}

function viaWasiHttp(url) {
  const req = new OutgoingRequest(new Fields());
  req.setScheme(
    url.protocol === 'https:'
      ? { tag: 'HTTPS' }
      : url.protocol === 'http:'
        ? { tag: 'HTTP' }
        : { tag: 'other', val: url.protocol.slice(0, -1) },
  );
  req.setAuthority(url.host);
  req.setPathWithQuery(url.pathname + url.search);
  const future = send(req); // throws at once on some errors (its .payload is the error-code)
  future.subscribe().block();
  // get(): option<result<result<incoming-response, error-code>>>; nested results are {tag, val}
  const inner = future.get().val;
  if (inner.tag === 'err') throw { payload: inner.val };
  const response = inner.val;
  const stream = response.consume().stream();
  const chunks = [];
  for (;;) {
    try {
      chunks.push(stream.blockingRead(65536n));
    } catch (e) {
      if (e.payload?.tag === 'closed') break;
      throw e;
    }
  }
  const body = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    body.set(c, at);
    at += c.length;
  }
  return { status: response.status(), body: new TextDecoder().decode(body) };
}

async function handle(request) {
  const incoming = new URL(request.url);
  let url;
  try {
    url = new URL(incoming.searchParams.get('url')); // StarlingMonkey's URL has no URL.canParse
  } catch {
    return text('usage: GET /?url=<percent-encoded absolute url> (or /raw?url=...)\n', 400);
  }
  try {
    const { status, body } = incoming.pathname === '/raw' ? viaWasiHttp(url) : await viaFetch(url);
    return text(`status=${status}\n${body}`, 200);
  } catch (e) {
    const why = e?.payload !== undefined ? JSON.stringify(e.payload) : String(e);
    return text(`outbound error: ${why}\n`, 502);
  }
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
