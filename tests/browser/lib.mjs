// Helpers for the console's browser tests (run by the Rust integration
// tests as `node tests/browser/SOMETHING.mjs ...`, so that playwright-core
// resolves from tests/browser/node_modules; see scripts/browser-deps.sh).
import { createHmac } from 'node:crypto';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.GATEHOUSE_CHROMIUM || '/usr/bin/chromium';

// Headless Debian chromium through playwright-core. Returns
// { browser, context, page, close }; the context accepts self-signed
// certificates (the test gateway's).
export async function launch({ viewport = { width: 1280, height: 800 }, ...contextOptions } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox'],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport, ...contextOptions });
  const page = await context.newPage();
  return { browser, context, page, close: () => browser.close() };
}

// RFC 4648 base32 (spaces, padding and case ignored) to bytes.
function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = text.toUpperCase().replace(/[\s=-]/g, '');
  const out = [];
  let bits = 0;
  let value = 0;
  for (const ch of clean) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new Error(`totp: invalid base32 character ${JSON.stringify(ch)}`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

// RFC 6238 TOTP: HMAC-SHA-1, 30 s step, 6 digits. unixTime in seconds
// (defaults to now).
export function totp(base32Secret, unixTime = Date.now() / 1000) {
  const counter = BigInt(Math.floor(unixTime / 30));
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(counter);
  const mac = createHmac('sha1', base32Decode(base32Secret)).update(msg).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(code).padStart(6, '0');
}
