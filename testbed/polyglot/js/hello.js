// hello: any request -> 200 text/plain "hello from outpost javascript\n".
// StarlingMonkey's fetch-event: the world exports wasi:http/incoming-handler, so a `fetch`
// listener handles each request.
addEventListener('fetch', (event) =>
  event.respondWith(
    new Response('hello from outpost javascript\n', {
      headers: { 'content-type': 'text/plain' },
    }),
  ),
);
