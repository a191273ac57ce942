// The administrator's page on a phone (390 × 844) in a real browser: nothing scrolls the page
// sideways, and every column of the records table is shown (the tables scroll inside their
// box). Run by tests/api/browser.rs against a server it started with failed-login records;
// never downloads a browser.
//
// Environment: PORTCULLIS_URL, PORTCULLIS_USER (an administrator), PORTCULLIS_PASSWORD,
// PORTCULLIS_CHROMIUM (default /usr/bin/chromium). Prints one line per step; exits non-zero at
// the first failure.
import { check, inChromium, step } from './common.mjs';

const base = process.env.PORTCULLIS_URL;
const user = process.env.PORTCULLIS_USER;
const password = process.env.PORTCULLIS_PASSWORD;
if (!base || !user || !password) {
  console.error('PORTCULLIS_URL, _USER and _PASSWORD are required');
  process.exit(2);
}

await inChromium([], async (browser) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 } });
  const page = await context.newPage();

  step('sign in as the administrator on a phone');
  await page.goto(`${base}/login`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL(`${base}/`), page.click('form[action="/login"] button[type=submit]')]);

  step('the failed-logins page fits the phone and shows every column of its records');
  await page.goto(`${base}/admin/failed-logins`);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `the page is ${width} px wide on a 390 px phone`);
  const hidden = await page.evaluate(() => [...document.querySelectorAll('table.records th, table.records td')]
    .filter((cell) => getComputedStyle(cell).display === 'none').map((cell) => cell.textContent));
  check(hidden.length === 0, `hidden cells of the records: ${JSON.stringify(hidden.slice(0, 5))}`);
  const reasons = await page.locator('table.records .reason').allTextContents();
  check(reasons.length > 0 && reasons.every((r) => r.length > 0), `reasons shown: ${JSON.stringify(reasons)}`);
  await context.close();
});
