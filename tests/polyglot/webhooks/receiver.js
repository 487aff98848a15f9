// A videogen webhook receiver: verify the signature with the Standard
// Webhooks library, answer 2xx fast, and handle each event once (deliveries
// are at least once; de-duplicate on the webhook-id header).
//
//   npm install standardwebhooks
//   WEBHOOK_SECRET=whsec_... PORT=8080 node receiver.js
'use strict';
const http = require('node:http');
const { Webhook } = require('standardwebhooks');

// The tenant's webhook_secret, printed once by `videogen-server keys create`.
const webhook = new Webhook(process.env.WEBHOOK_SECRET);
const MAX_BODY = 1 << 20;
const seen = new Set(); // in production: a unique key in your database, with a TTL

// Your code: runs after the 2xx went out.
function handle(webhookId, event) {
  const g = event.generation;
  console.log(JSON.stringify({
    webhook_id: webhookId, id: g.id, state: g.state, video: g.video?.url ?? '',
  }));
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') return res.writeHead(405).end();
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_BODY) return res.writeHead(413).end();
    let event;
    try {
      // Checks webhook-id, webhook-timestamp (5 min tolerance) and
      // webhook-signature against the raw body; returns the parsed JSON.
      event = webhook.verify(Buffer.concat(chunks), req.headers);
    } catch {
      return res.writeHead(400).end();
    }
    const webhookId = req.headers['webhook-id'];
    res.writeHead(204).end(); // fast: videogen waits at most 15 s, then retries
    if (seen.has(webhookId)) return;
    seen.add(webhookId);
    setImmediate(() => handle(webhookId, event));
  });
});

server.listen(Number(process.env.PORT ?? 8080), process.env.HOST ?? '127.0.0.1',
  () => {
    const { address, port } = server.address();
    console.log(`listening on http://${address}:${port}`);
  });
