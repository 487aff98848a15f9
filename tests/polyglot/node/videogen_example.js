// Generate a video from Node with @grpc/grpc-js and @grpc/proto-loader,
// loading proto/ at run time (no code generation step). Every call carries
// your API key (`videogen-server keys create --tenant=NAME` prints one) as
// `authorization: Bearer KEY`; by default it comes from VIDEOGEN_API_KEY.
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function connect(address = '127.0.0.1:50051', protoDir = 'proto',
  apiKey = process.env.VIDEOGEN_API_KEY) {
  if (!apiKey) throw new Error('set VIDEOGEN_API_KEY to your videogen API key');
  const definition = protoLoader.loadSync('videogen/v1/video_generation.proto', {
    includeDirs: [protoDir], // google/protobuf/timestamp.proto is bundled
    longs: Number, // int64 revision as a JS number
    enums: String, // 'STATE_COMPLETED', 'TYPE_SNAPSHOT', ...
    defaults: true,
  });
  const { VideoGeneration } = grpc.loadPackageDefinition(definition).videogen.v1;
  // Adds the key to every call made through this client.
  const withKey = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${apiKey}`);
      next(metadata, listener);
    },
  });
  return new VideoGeneration(address, grpc.credentials.createInsecure(),
    { interceptors: [withKey] });
}

function printEvent(event) {
  const g = event.generation;
  console.log(event.type, g.revision, g.state, g.video ? g.video.url : '');
}

// Streams one generation to its end; resolves with the final Generation.
// Retrying with the same requestId never starts a second (billed) job.
function generate(client, prompt, { requestId = '', onEvent = printEvent } = {}) {
  return follow(client.generate({ prompt, requestId }), onEvent);
}

// Follows a generation; after a dropped stream, pass the last revision seen
// as afterRevision and nothing is repeated or missed.
function watch(client, id, { afterRevision = 0, onEvent = printEvent } = {}) {
  return follow(client.watchGeneration({ id, afterRevision }), onEvent);
}

function follow(call, onEvent) {
  return new Promise((resolve, reject) => {
    let last = null;
    call.on('data', (event) => {
      onEvent(event);
      if (event.type !== 'TYPE_HEARTBEAT') last = event.generation;
    });
    call.on('error', reject); // err.code is a grpc.status, e.g. UNAUTHENTICATED
    call.on('end', () => resolve(last));
  });
}

module.exports = { connect, generate, watch };

if (require.main === module) {
  const client = connect();
  generate(client, 'a red fox running through fresh snow').then(
    (g) => console.log(g.state, g.video.url),
    (err) => { console.error(err.message); process.exitCode = 1; });
}
