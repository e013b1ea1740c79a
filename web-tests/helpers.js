// Helpers for the browser tests: the real server binary, real Chromium through playwright-core.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const outputDir = path.join(repoRoot, 'test-output');

export const serverBin = path.resolve(repoRoot, process.env.DYNAMOWAVE_BIN ?? 'target/debug/dynamowave');
const chromiumBin = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A `dynamowave serve` process on 127.0.0.1, with its own data dir. `start()` picks a free port
 * the first time (the server prints the address it bound) and reuses it on restarts.
 */
export class Server {
  /** `args`: more `dynamowave serve` flags (e.g. `--auth jwt ...`). */
  constructor(args = []) {
    this.extraArgs = args;
    this.port = 0;
    this.dataDir = null;
    this.proc = null;
    this.log = [];
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (!existsSync(serverBin)) {
      throw new Error(`server binary not found: ${serverBin} (run \`cargo build -p dynamowave\` or set DYNAMOWAVE_BIN)`);
    }
    this.dataDir ??= await mkdtemp(path.join(tmpdir(), 'dynamowave-web-'));
    // A restart may race the old socket's release: try the same port a few times.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#spawn();
        return;
      } catch (err) {
        if (this.port === 0 || attempt >= 20) throw err;
        await sleep(250);
      }
    }
  }

  async #spawn() {
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', path.join(this.dataDir, 'data'), ...this.extraArgs];
    const proc = spawn(serverBin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    let stdout = '';
    proc.stderr.setEncoding('utf8').on('data', (chunk) => this.log.push(chunk));
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start in 15 s: ${this.log.join('')}`)), 15_000);
      proc.stdout.setEncoding('utf8').on('data', (chunk) => {
        stdout += chunk;
        const match = stdout.match(/ws:\/\/127\.0\.0\.1:(\d+)\/ws/);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? signal}) before it was ready: ${this.log.join('').slice(-2000)}`));
      });
    });
    this.port = await ready;
    this.proc = proc;
  }

  /** SIGTERM (a graceful shutdown), then waits for the process to end. */
  async stop() {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }

  async dispose() {
    await this.stop();
    if (this.dataDir) await rm(this.dataDir, { recursive: true, force: true });
  }
}

/** Real Chromium. Playwright gives it a fresh temporary --user-data-dir of its own. */
export function launchBrowser() {
  if (!existsSync(chromiumBin)) {
    throw new Error(`Chromium not found at ${chromiumBin}: apt-get install -y chromium (scripts/browser-tests.sh does it)`);
  }
  return chromium.launch({ executablePath: chromiumBin, args: CHROMIUM_ARGS, timeout: 60_000 });
}

/**
 * A new browser context (its own cookies and storage) with the chat page open, signed in as
 * `name`, connected, and in #general. Console errors and page errors are collected in
 * `page.problems`.
 */
export async function openChat(browser, server, name, viewport = { width: 1280, height: 800 }, { initScript } = {}) {
  const context = await browser.newContext({ viewport });
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.problems.push(`console: ${msg.text()}`);
  });
  // Every WebSocket frame, for the failure messages of tests.
  page.frames = [];
  page.on('websocket', (ws) => {
    const log = (dir) => (frame) => page.frames.push(`${new Date().toISOString().slice(11, 23)} ${dir} ${String(frame.payload).slice(0, 300)}`);
    ws.on('framesent', log('>'));
    ws.on('framereceived', log('<'));
    ws.on('close', () => page.frames.push('-- closed'));
  });
  await page.goto(`${server.origin}/`);
  await page.fill('#name', name);
  await page.click('#connect');
  await waitConnected(page);
  await page.waitForSelector('#rooms [data-room="general"].current', { state: 'attached' });
  return page;
}

export function waitConnected(page, timeout = 20_000) {
  return page.waitForSelector('#status[data-state="connected"]', { timeout });
}

/** Types a message into the composer and presses Enter, as a person would. */
export async function typeAndSend(page, text) {
  await page.fill('#composer', text);
  await page.press('#composer', 'Enter');
}

/** [{id, seq, own, pending, failed, text}] of the messages shown, in page order. */
export function shownMessages(page) {
  return page.$$eval('#messages .message', (items) => items.map((li) => ({
    id: li.dataset.id,
    seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
    own: li.classList.contains('own'),
    pending: li.classList.contains('pending'),
    failed: li.classList.contains('failed'),
    text: li.querySelector('.body')?.textContent ?? '',
  })));
}
