// Test harness: runs the real videogen-sim and videogen-server binaries on
// free loopback ports. Binaries come from the environment (set by ctest):
// VIDEOGEN_SERVER_BIN, VIDEOGEN_SIM_BIN. A missing one is an error.
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..', '..');
const PROTO_DIR = path.join(REPO, 'proto');
const START_TIMEOUT_MS = 30000;

function requiredEnv(name) {
  const value = process.env[name] || '';
  try {
    fs.accessSync(value, fs.constants.X_OK);
  } catch {
    throw new Error(`${name} must name an executable (got '${value}')`);
  }
  return value;
}

// A child process whose output is collected; waitFor() resolves with the
// first match of a pattern in it.
class Process {
  constructor(argv, env = {}) {
    this.argv = argv;
    this.output = '';
    this.child = spawn(argv[0], argv.slice(1), {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const collect = (chunk) => { this.output += chunk.toString(); };
    this.child.stdout.on('data', collect);
    this.child.stderr.on('data', collect);
    this.exited = new Promise((resolve) => this.child.on('exit', resolve));
  }

  waitFor(pattern) {
    return new Promise((resolve, reject) => {
      const timer = setInterval(check, 50);
      const deadline = Date.now() + START_TIMEOUT_MS;
      const self = this;
      function check() {
        const m = self.output.match(pattern);
        if (m) {
          clearInterval(timer);
          resolve(m);
        } else if (Date.now() > deadline || self.child.exitCode !== null) {
          clearInterval(timer);
          reject(new Error(`${self.argv[0]} did not print ${pattern}; output:\n${self.output}`));
        }
      }
    });
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const killer = setTimeout(() => this.child.kill('SIGKILL'), 10000);
      await this.exited;
      clearTimeout(killer);
    }
  }
}

// `videogen-server keys create` against the server's store: the JSON object
// it prints (key, key_id, webhook_secret, ...).
function createKey(serverBin, dataDir, tenant) {
  const out = execFileSync(serverBin, ['keys', 'create', `--tenant=${tenant}`,
    '--store=sqlite', `--data_dir=${dataDir}`], { timeout: START_TIMEOUT_MS });
  return JSON.parse(out.toString());
}

// videogen-sim plus a videogen-server (API keys on, the default) that polls
// it. `key` belongs to tenant "polyglot", `otherKey` to "other". `simFlags`
// go to videogen-sim, e.g. ['--error_rate=1'] for a stack whose every job
// ends in an upstream task error.
async function startStack({ simFlags = [] } = {}) {
  const upstreamKey = 'polyglot-upstream-key';
  const serverBin = requiredEnv('VIDEOGEN_SERVER_BIN');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'videogen-polyglot-'));
  const { key } = createKey(serverBin, dataDir, 'polyglot');
  const otherKey = createKey(serverBin, dataDir, 'other').key;
  const sim = new Process([requiredEnv('VIDEOGEN_SIM_BIN'), '--listen=127.0.0.1:0',
    `--key=${upstreamKey}`, '--queued_for=300ms', '--generating_for=600ms',
    ...simFlags]);
  const simUrl = (await sim.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/))[1];
  const server = new Process([serverBin, '--listen=127.0.0.1:0',
    `--upstream_url=${simUrl}`, '--store=sqlite', `--data_dir=${dataDir}`,
    '--poll_initial_delay=100ms', '--poll_interval=150ms'], { AIMLAPI_KEY: upstreamKey });
  const removeData = () => fs.rmSync(dataDir, { recursive: true, force: true });
  let line;
  try {
    line = (await server.waitFor(/.*"event":\s*"server_listening".*/))[0];
  } catch (err) {
    await sim.stop();
    removeData();
    throw err;
  }
  return {
    address: JSON.parse(line).address,
    key,
    otherKey,
    async stop() {
      await server.stop();
      await sim.stop();
      removeData();
    },
  };
}

module.exports = { PROTO_DIR, startStack };
