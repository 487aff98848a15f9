// Node client against the real videogen-server and videogen-sim, using the
// README's snippet (videogen_example.js). Run: node --test videogen.test.js
const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');

const { PROTO_DIR, startStack } = require('./harness');
const { connect, generate, watch } = require('./videogen_example');

let stack;
let client;
const quiet = () => {};

before(async () => {
  stack = await startStack();
  // The example reads the key from the environment, as a user's script would.
  process.env.VIDEOGEN_API_KEY = stack.key;
  client = connect(stack.address, PROTO_DIR);
});

after(async () => {
  if (client) client.close();
  if (stack) await stack.stop();
});

function assertRising(events, after = 0) {
  const revisions = events.filter((e) => e.type !== 'TYPE_HEARTBEAT')
    .map((e) => e.generation.revision);
  assert.ok(revisions.length > 0, 'no events');
  assert.ok(revisions[0] > after, `first revision ${revisions[0]} <= ${after}`);
  for (let i = 1; i < revisions.length; i++) {
    assert.ok(revisions[i] > revisions[i - 1], `revisions not rising: ${revisions}`);
  }
}

test('Generate streams to completion', async () => {
  const events = [];
  const final = await generate(client, 'a red fox running through fresh snow',
    { requestId: crypto.randomUUID(), onEvent: (e) => events.push(e) });
  assert.equal(events[0].type, 'TYPE_SNAPSHOT');
  assert.equal(events[0].generation.state, 'STATE_QUEUED');
  assertRising(events);
  assert.ok(events.some((e) => e.generation.state === 'STATE_GENERATING'));
  assert.equal(final.state, 'STATE_COMPLETED');
  assert.equal(final.done, true);
  assert.match(final.video.url, /^http/);
});

test('WatchGeneration resumes after a revision', async () => {
  // Read the first event of a Generate stream, then drop the stream.
  const first = await new Promise((resolve, reject) => {
    const call = client.generate({ prompt: 'waves at dusk', requestId: crypto.randomUUID() });
    call.once('data', (event) => {
      resolve(event);
      call.cancel();
    });
    call.on('error', (err) => { if (err.code !== grpc.status.CANCELLED) reject(err); });
  });
  const seen = first.generation.revision;

  const events = [];
  const final = await watch(client, first.generation.id,
    { afterRevision: seen, onEvent: (e) => events.push(e) });
  assertRising(events, seen);
  assert.equal(final.id, first.generation.id);
  assert.equal(final.state, 'STATE_COMPLETED');

  // A terminal generation watched from 0 is one SNAPSHOT, then OK.
  const replay = [];
  await watch(client, final.id, { onEvent: (e) => replay.push(e) });
  assert.deepEqual(replay.map((e) => e.type), ['TYPE_SNAPSHOT']);
  assert.equal(replay[0].generation.revision, final.revision);
});

test('the same requestId is the same generation', async () => {
  const request = { prompt: 'a lighthouse', requestId: crypto.randomUUID() };
  const create = () => new Promise((resolve, reject) => {
    client.createGeneration(request, (err, g) => (err ? reject(err) : resolve(g)));
  });
  const a = await create();
  const b = await create();
  assert.equal(a.id, b.id);
});

test('an invalid request is INVALID_ARGUMENT', async () => {
  await assert.rejects(generate(client, '   ', { onEvent: quiet }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /prompt/);
    return true;
  });
  await assert.rejects(new Promise((resolve, reject) => {
    client.createGeneration({ prompt: 'ok', durationSeconds: 7 },
      (err, g) => (err ? reject(err) : resolve(g)));
  }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /duration_seconds/);
    return true;
  });
});

function getGeneration(c, id) {
  return new Promise((resolve, reject) => {
    c.getGeneration({ id }, (err, g) => (err ? reject(err) : resolve(g)));
  });
}

test('a missing or unknown key is UNAUTHENTICATED', async () => {
  assert.throws(() => connect(stack.address, PROTO_DIR, ''), /VIDEOGEN_API_KEY/);
  const wrong = connect(stack.address, PROTO_DIR, 'vgk_not_a_real_key');
  try {
    await assert.rejects(getGeneration(wrong, 'no-such-id'), (err) => {
      assert.equal(err.code, grpc.status.UNAUTHENTICATED);
      assert.doesNotMatch(err.details, /vgk_not_a_real_key/);
      return true;
    });
    await assert.rejects(watch(wrong, 'no-such-id', { onEvent: quiet }),
      (err) => err.code === grpc.status.UNAUTHENTICATED);
  } finally {
    wrong.close();
  }
  // The same client class without the interceptor: no authorization at all.
  const bare = new client.constructor(stack.address, grpc.credentials.createInsecure());
  try {
    await assert.rejects(getGeneration(bare, 'no-such-id'),
      (err) => err.code === grpc.status.UNAUTHENTICATED);
  } finally {
    bare.close();
  }
});

test('tenants do not see each other', async () => {
  const request = { prompt: 'a lighthouse', requestId: crypto.randomUUID() };
  const other = connect(stack.address, PROTO_DIR, stack.otherKey);
  try {
    const create = (c) => new Promise((resolve, reject) => {
      c.createGeneration(request, (err, g) => (err ? reject(err) : resolve(g)));
    });
    const mine = await create(client);
    const theirs = await create(other); // same requestId, another tenant
    assert.notEqual(theirs.id, mine.id);
    await assert.rejects(getGeneration(other, mine.id),
      (err) => err.code === grpc.status.NOT_FOUND);
  } finally {
    other.close();
  }
});

test('an unknown id is NOT_FOUND', async () => {
  await assert.rejects(new Promise((resolve, reject) => {
    client.getGeneration({ id: 'no-such-id' }, (err, g) => (err ? reject(err) : resolve(g)));
  }), (err) => err.code === grpc.status.NOT_FOUND);
  await assert.rejects(watch(client, 'no-such-id', { onEvent: quiet }),
    (err) => err.code === grpc.status.NOT_FOUND);
});

// Every event of a server stream and its final gRPC status (also when OK).
function collectStream(call) {
  return new Promise((resolve, reject) => {
    const events = [];
    let status = null;
    let ended = false;
    const done = () => { if (status && ended) resolve({ events, status }); };
    call.on('data', (event) => events.push(event));
    call.on('error', reject);
    call.on('status', (s) => { status = s; done(); });
    call.on('end', () => { ended = true; done(); });
  });
}

describe('a FAILED generation', () => {
  // A stack whose simulated upstream fails every job (--error_rate=1).
  let failing;
  let failingClient;

  before(async () => {
    failing = await startStack({ simFlags: ['--error_rate=1'] });
    failingClient = connect(failing.address, PROTO_DIR, failing.key);
  });

  after(async () => {
    if (failingClient) failingClient.close();
    if (failing) await failing.stop();
  });

  function assertFailed(g) {
    assert.equal(g.state, 'STATE_FAILED');
    assert.equal(g.done, true);
    assert.equal(g.error.reason, 'UPSTREAM_TASK_ERROR');
    assert.equal(g.error.code, grpc.status.INTERNAL);
    assert.ok(g.error.message.trim().length > 0, 'empty error.message');
    // The upstream's own message is part of it.
    assert.match(g.error.message, /The simulated model failed to render this prompt/);
    assert.equal(g.video ? g.video.url : '', '');
  }

  test('is an OK stream with error.reason', async () => {
    const { events, status } = await collectStream(failingClient.generate(
      { prompt: 'a storm at sea', requestId: crypto.randomUUID() }));
    assert.equal(status.code, grpc.status.OK, status.details);
    assert.equal(events[0].type, 'TYPE_SNAPSHOT');
    assertRising(events);
    // The stream ends right after the terminal event; only it has the error.
    const final = events[events.length - 1];
    assert.notEqual(final.type, 'TYPE_HEARTBEAT');
    assertFailed(final.generation);
    for (const e of events.slice(0, -1)) {
      assert.notEqual(e.generation.state, 'STATE_FAILED');
      assert.equal(e.generation.error, null);
    }

    // The README's watch() replays it from 0 as one SNAPSHOT of the FAILED
    // generation and resolves (no rejection).
    const replay = [];
    const watched = await watch(failingClient, final.generation.id,
      { onEvent: (e) => replay.push(e) });
    assert.deepEqual(replay.map((e) => e.type), ['TYPE_SNAPSHOT']);
    assert.equal(watched.revision, final.generation.revision);
    assertFailed(watched);
  });
});
