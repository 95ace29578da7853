#!/usr/bin/env node
// Drives Ember's relay self-test page (GET /selftest) in Debian's headless Chromium and
// prints one JSON object with what the page shows: the verdict, the candidate rows, the
// icecandidateerror entries, the relay-only round trip, the one-click message and the
// requests the page made. Used by tests/tests/selftest_page.rs.
//
//   node selftest_page.mjs --url http://127.0.0.1:PORT/selftest#token=T --scenario oneclick \
//        --screenshot /path/shot.png
//   node selftest_page.mjs --url http://127.0.0.1:PORT/selftest --scenario form \
//        --username alice --credential wrong --screenshot /path/shot.png
//
// Scenarios: `oneclick` clicks #oneclick (the token comes from the URL's #token= or
// --token); `form` fills #username/#credential (and #urls with --urls, newline-separated)
// and clicks #gather. Exit status: 0 when the page was driven to a final verdict (whatever
// it says), 1 on this script's own errors (also printed to stderr), 2 on bad arguments.
// Every step is bounded; --timeout-ms bounds the whole run (default 90 s).

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  // Keep the browser off the network; 127.0.0.1 must be excluded or even IP pages fail.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]',
];
// Without this, host candidates are mDNS names and Chromium sends mDNS queries out.
const OUR_DISABLED_FEATURES = ['WebRtcHideLocalIpsWithMdns'];

function usage(msg) {
  process.stderr.write(`selftest_page.mjs: ${msg}\n` +
    'usage: node selftest_page.mjs --url URL --scenario oneclick|form --screenshot PATH\n' +
    '       [--token T] [--username U --credential C] [--urls "u1\\nu2"] [--no-rtt]\n' +
    '       [--chromium /usr/bin/chromium] [--timeout-ms 90000]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { chromium: '/usr/bin/chromium', timeoutMs: 90000, rtt: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': o.url = val(); break;
      case '--scenario': o.scenario = val(); break;
      case '--screenshot': o.screenshot = val(); break;
      case '--token': o.token = val(); break;
      case '--username': o.username = val(); break;
      case '--credential': o.credential = val(); break;
      case '--urls': o.urls = val(); break;
      case '--no-rtt': o.rtt = false; break;
      case '--chromium': o.chromium = val(); break;
      case '--timeout-ms': o.timeoutMs = Number(val()); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.url) usage('--url is required');
  if (!['oneclick', 'form'].includes(o.scenario)) usage('--scenario must be oneclick or form');
  if (!o.screenshot) usage('--screenshot is required');
  if (!(o.timeoutMs > 0)) usage('--timeout-ms must be a positive number');
  if (o.scenario === 'form' && (o.username === undefined || o.credential === undefined)) {
    usage('--scenario form needs --username and --credential');
  }
  return o;
}

// Playwright passes its own --disable-features list and Chromium honours only the last
// --disable-features flag: drop Playwright's from the defaults and pass the union instead.
async function disabledFeaturesArgs(userDataDir) {
  let playwrightDefault = null;
  try {
    const require = createRequire(import.meta.url);
    const core = require('playwright-core/lib/coreBundle');
    const pw = core.server.createPlaywright({ sdkLanguage: 'javascript' });
    const defaults = await pw.chromium.defaultArgs({ headless: true, args: [] }, true, userDataDir);
    playwrightDefault = defaults.find((a) => a.startsWith('--disable-features=')) || null;
  } catch (e) {
    process.stderr.write(`selftest_page.mjs: cannot read Playwright's default --disable-features (${e.message}); ` +
      'passing ours last, which overrides it\n');
  }
  const theirs = playwrightDefault ? playwrightDefault.slice('--disable-features='.length).split(',') : [];
  const merged = [...new Set([...theirs, ...OUR_DISABLED_FEATURES].filter(Boolean))];
  return {
    ignoreDefaultArgs: playwrightDefault ? [playwrightDefault] : [],
    arg: '--disable-features=' + merged.join(','),
  };
}

// Reads the browser's real command line from chrome://version and checks that the
// --disable-features flag that counts (the last one) has ours in it.
async function verifyFlags(context) {
  const page = await context.newPage();
  try {
    await page.goto('chrome://version', { timeout: 10000 });
    const cmd = await page.locator('#command_line').innerText({ timeout: 5000 });
    const all = [...cmd.matchAll(/--disable-features=(\S+)/g)].map((m) => m[1]);
    const last = all.length ? all[all.length - 1].replace(/^"|"$/g, '').split(',') : [];
    const missing = OUR_DISABLED_FEATURES.filter((f) => !last.includes(f));
    return { disableFeaturesFlags: all.length, effective: last, ok: missing.length === 0, missing,
             allowLoopback: cmd.includes('--allow-loopback-in-peer-connection') };
  } finally {
    await page.close().catch(() => {});
  }
}

async function collect(page) {
  return page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const text = (e) => (e ? e.innerText.replace(/\s+\n/g, '\n').trim() : null);
    const v = q('#verdict');
    const rtt = q('#rtt');
    const msg = q('#oneclick-msg');
    const num = (x) => (x === undefined || x === null || x === '' ? null : Number(x));
    return {
      verdict: {
        status: v.dataset.status,
        relayScope: v.dataset.relayScope || null,
        title: text(q('#verdict-title')),
        detail: text(q('#verdict-detail')),
      },
      candidates: [...document.querySelectorAll('#candidates tbody tr')].map((tr) => ({
        type: tr.dataset.type,
        protocol: tr.dataset.protocol,
        address: tr.dataset.address,
        port: num(tr.dataset.port),
        relayProtocol: tr.dataset.relayProtocol || null,
        scope: tr.dataset.scope,
        url: text(tr.querySelector('.server-url')),
      })),
      errors: [...document.querySelectorAll('#errors li')].map((li) => ({
        code: num(li.dataset.code),
        url: li.dataset.url || null,
        text: text(li),
      })),
      rtt: {
        status: rtt.dataset.status,
        medianMs: num(rtt.dataset.medianMs),
        maxMs: num(rtt.dataset.maxMs),
        pair: rtt.dataset.pair || null,
        text: text(q('#rtt-body')),
      },
      oneclick: msg.hidden ? null : {
        status: msg.dataset.status || null,
        httpStatus: num(msg.dataset.httpStatus),
        text: text(msg),
      },
      servers: [...document.querySelectorAll('#servers tbody tr')].map((tr) => ({
        status: tr.dataset.status,
        text: text(tr),
      })),
      report: (window.emberSelftest && window.emberSelftest.report) || null,
      location: location.href,
    };
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.chromium)) {
    throw new Error(`${opts.chromium} not found: install Debian's chromium (apt-get install chromium)`);
  }
  fs.mkdirSync(path.dirname(path.resolve(opts.screenshot)), { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-chromium-'));
  const started = Date.now();
  const left = () => Math.max(1000, opts.timeoutMs - (Date.now() - started));
  let context = null;
  // Hard stop: whatever hangs, the process ends (Playwright kills the browser on exit).
  const watchdog = setTimeout(() => {
    process.stderr.write(`selftest_page.mjs: gave up after ${opts.timeoutMs} ms\n`);
    process.exit(1);
  }, opts.timeoutMs + 15000);
  watchdog.unref();
  const consoleLines = [];
  const requests = [];
  try {
    const features = await disabledFeaturesArgs(userDataDir);
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: [...FLAGS, features.arg],
      ignoreDefaultArgs: features.ignoreDefaultArgs,
      viewport: { width: 1280, height: 900 },
      timeout: 30000,
    });
    context.setDefaultTimeout(15000);
    const flags = await verifyFlags(context);
    if (!flags.ok) throw new Error(`--disable-features did not take effect: ${JSON.stringify(flags)}`);

    const page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    page.on('request', (r) => requests.push({
      method: r.method(), url: r.url(), authorization: r.headers().authorization !== undefined,
    }));

    await page.goto(opts.url, { timeout: 15000 });
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });
    if (opts.scenario === 'form') {
      if (opts.urls !== undefined) await page.fill('#urls', opts.urls.replace(/\\n/g, '\n'));
      await page.fill('#username', opts.username);
      await page.fill('#credential', opts.credential);
      await page.setChecked('#with-rtt', opts.rtt);
      await page.click('#gather');
    } else {
      if (opts.token !== undefined) await page.fill('#token', opts.token);
      await page.click('#oneclick');
    }
    // The verdict stays `running` until gathering and the round trip are both done.
    await page.waitForFunction(
      () => ['pass', 'warn', 'fail'].includes(document.querySelector('#verdict').dataset.status),
      null, { timeout: left(), polling: 100 });
    const result = await collect(page);
    await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: 15000 });
    const out = {
      scenario: opts.scenario,
      ...result,
      requests,
      console: consoleLines,
      browser: { version: context.browser() ? context.browser().version() : null, flags },
      screenshot: path.resolve(opts.screenshot),
      elapsedMs: Date.now() - started,
    };
    process.stdout.write(JSON.stringify(out) + '\n');
  } catch (e) {
    // A screenshot of whatever the page shows helps more than the stack alone.
    if (context) {
      const page = context.pages()[0];
      if (page) await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: 5000 }).catch(() => {});
    }
    process.stderr.write(`selftest_page.mjs: ${e && e.stack ? e.stack : e}\n`);
    if (consoleLines.length) process.stderr.write(`page console:\n  ${consoleLines.join('\n  ')}\n`);
    process.exitCode = 1;
  } finally {
    if (context) {
      let timer;
      const limit = new Promise((r) => { timer = setTimeout(r, 10000); });
      await Promise.race([context.close(), limit]).catch(() => {});
      clearTimeout(timer);
    }
    fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 3 });
    clearTimeout(watchdog);
  }
}

main().catch((e) => {
  process.stderr.write(`selftest_page.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
