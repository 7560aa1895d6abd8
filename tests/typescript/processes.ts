// The coordinator and fake participants as processes, each on a free port it writes to a port
// file, as tests/python/conftest.py starts them. Binaries: $TCC_COORDINATOR_BIN and
// $TCC_FAKE_PARTICIPANT_BIN, or target/release/.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

// dist/ inside tests/typescript/ inside the repository.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const PATIENCE_MS = 30_000;

function binary(variable: string, name: string): string {
  return process.env[variable] ?? join(ROOT, "target", "release", name);
}

/** Polls `check` until it gives something other than undefined, and gives that. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const found = await check();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`this never happened: ${what}`);
    await sleep(20);
  }
}

/** A binary started with `--listen 127.0.0.1:0 --port-file FILE`. */
export class Process {
  readonly url: string;
  private constructor(private readonly child: ChildProcess, url: string) {
    this.url = url;
  }

  static async start(args: string[], name: string): Promise<Process> {
    const dir = mkdtempSync(join(tmpdir(), `tcc-ts-${name}-`));
    const portFile = join(dir, `${name}.port`);
    const log = openSync(join(dir, `${name}.log`), "w");
    const [program, ...rest] = args as [string, ...string[]];
    const child = spawn(program, [...rest, "--listen", "127.0.0.1:0", "--port-file", portFile], {
      stdio: ["ignore", log, log],
    });
    const port = await waitFor(`${name} writes its port file`, async () => {
      if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}: see ${dir}`);
      try {
        const text = readFileSync(portFile, "utf8").trim();
        return text ? Number(text) : undefined;
      } catch {
        return undefined;
      }
    });
    return new Process(child, `http://127.0.0.1:${port}`);
  }

  stop(): void {
    this.child.kill("SIGTERM");
  }
}

/** The coordinator on a temporary log, ready. */
export async function startCoordinator(): Promise<Process> {
  const coordinator = await Process.start(
    [binary("TCC_COORDINATOR_BIN", "tcc-coordinator"), "--ephemeral", "--max-retry-interval", "500ms"],
    "coordinator",
  );
  await waitFor("the coordinator is ready", async () => {
    const ready = await fetch(`${coordinator.url}/health/ready`);
    return ready.status === 200 ? true : undefined;
  });
  return coordinator;
}

export interface Call {
  verb: string;
  status: number | null;
  scripted: boolean;
  idempotency_key: string | null;
  reservation: string | null;
  deadline: string | null;
}

/** tcc-fake-participant, scripted and read over its control API. */
export class FakeParticipant {
  private constructor(private readonly process: Process) {}

  static async start(name: string): Promise<FakeParticipant> {
    return new FakeParticipant(
      await Process.start([binary("TCC_FAKE_PARTICIPANT_BIN", "tcc-fake-participant")], name),
    );
  }

  get tryUrl(): string {
    return `${this.process.url}/holds`;
  }

  async script(verb: string, ...answers: object[]): Promise<void> {
    const response = await fetch(`${this.process.url}/_script`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ verb, answers }),
    });
    if (response.status !== 204) throw new Error(`scripting failed: ${await response.text()}`);
  }

  async calls(verb?: string): Promise<Call[]> {
    const calls = (await (await fetch(`${this.process.url}/_calls`)).json()) as Call[];
    return calls.filter((c) => verb === undefined || c.verb === verb);
  }

  async holds(): Promise<{ state: string }[]> {
    return (await (await fetch(`${this.process.url}/_holds`)).json()) as { state: string }[];
  }

  stop(): void {
    this.process.stop();
  }
}
