// What the browser scripts share: their step lines, their checks, and one headless Chromium
// (Debian's, never downloaded) run around a script's body, which exits non-zero at the first
// failure.
import { chromium } from 'playwright-core';

/** Prints one step line (tests/api/browser.rs looks for `step: done`). */
export function step(text) {
  console.log(`step: ${text}`);
}

/** Throws `message` unless `condition` holds. */
export function check(condition, message) {
  if (!condition) { throw new Error(message); }
}

/**
 * Launches Chromium with `extraArgs`, runs `body(browser)`, says `step: done` when it returns,
 * and exits the process: 0 when it passed, 1 (with the error on stderr) when it threw.
 */
export async function inChromium(extraArgs, body) {
  const browser = await chromium.launch({
    executablePath: process.env.PORTCULLIS_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      ...extraArgs],
  });
  let failed = false;
  try {
    await body(browser);
    step('done');
  } catch (e) {
    failed = true;
    console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}
