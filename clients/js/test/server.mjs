// The real corecast server as a child process, for the Node and browser
// tests: started on a chosen (or free) loopback port, stopped with a
// signal, restarted on the same port. The binary is CORECAST_BIN, or the
// workspace's target/debug/corecast (built by `cargo test`); a test that
// cannot find it fails.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.CORECAST_BIN ?? resolve(here, "../../../target/debug/corecast");

/** A free loopback port. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** The HS256 JWT the server accepts with `secret`. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Starts the server with `env` (CORECAST_* variables) on `port`. */
export async function startServer(env = {}, port) {
  if (!existsSync(BIN)) {
    throw new Error(`corecast binary not found at ${BIN}: run cargo build (or set CORECAST_BIN)`);
  }
  port ??= await freePort();
  const proc = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      CORECAST_LOG: "info",
      NO_COLOR: "1",
      CORECAST_LISTEN: `127.0.0.1:${port}`,
      CORECAST_CORES: "2",
      CORECAST_PIN: "false",
      CORECAST_HISTORY__DURABILITY: "memory",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const log = [];
  await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`server did not start: ${log.join("\n")}`)), 10_000);
    let buf = "";
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        log.push(line);
        if (line.includes("listening")) {
          clearTimeout(t);
          res();
        }
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(t);
      rej(new Error(`server exited (${code}) before listening: ${log.join("\n")}`));
    });
  });
  const exited = new Promise((res) => proc.once("exit", (code, sig) => res(code ?? sig)));
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    http: `http://127.0.0.1:${port}`,
    log,
    proc,
    exited,
    /** Signals the server and waits for it to exit. */
    async stop(sig = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      return exited;
    },
  };
}
