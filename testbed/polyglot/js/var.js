// var: reads app variables through wasi:config/store (the manifest's `variables` grant).
// GET /<name> -> 200 with the value; 404 "no such variable: <name>" when the manifest does not
// grant it; 500 "config error: <e>" on a store error; GET / -> 400 (a name is needed).
import { get } from 'wasi:config/store@0.2.0-rc.1';

function text(body, status) {
  return new Response(body, { status, headers: { 'content-type': 'text/plain' } });
}

function handle(request) {
  const name = decodeURIComponent(new URL(request.url).pathname.slice(1));
  if (name === '') return text('usage: GET /<variable name>\n', 400);
  let value;
  try {
    value = get(name); // option<string>: undefined when unset
  } catch (e) {
    // result<_, error> errors are thrown; the WIT variant is in e.payload
    return text(`config error: ${JSON.stringify(e.payload ?? String(e))}\n`, 500);
  }
  return value === undefined ? text(`no such variable: ${name}\n`, 404) : text(value, 200);
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
