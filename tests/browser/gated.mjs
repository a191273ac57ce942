// Forward auth's round trip in a real browser: sign in and sign out with `rd` naming another
// host under `cookie_domain`, and land there. Chromium checks every redirect of a form's
// navigation against the page's CSP `form-action`, which an HTTP client does not. Run by
// tests/api/browser.rs against a server it started; never downloads a browser.
//
// Environment: PORTCULLIS_URL (https://login.example.test:PORT), PORTCULLIS_USER,
// PORTCULLIS_PASSWORD, PORTCULLIS_RD and PORTCULLIS_RD_OUT (URLs on another host under the
// cookie domain), PORTCULLIS_RESOLVE (a host name pattern mapped to 127.0.0.1, such as
// *.example.test), PORTCULLIS_CHROMIUM (default /usr/bin/chromium). Prints one line per
// step; exits non-zero at the first failure.
import { check, inChromium, step } from './common.mjs';

const base = process.env.PORTCULLIS_URL;
const user = process.env.PORTCULLIS_USER;
const password = process.env.PORTCULLIS_PASSWORD;
const rd = process.env.PORTCULLIS_RD;
const rdOut = process.env.PORTCULLIS_RD_OUT;
const resolve = process.env.PORTCULLIS_RESOLVE;
if (!base || !user || !password || !rd || !rdOut || !resolve) {
  console.error('PORTCULLIS_URL, _USER, _PASSWORD, _RD, _RD_OUT and _RESOLVE are required');
  process.exit(2);
}

await inChromium([`--host-resolver-rules=MAP ${resolve} 127.0.0.1`], async (browser) => {
  // The development certificate is self-signed (it names localhost).
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const violations = [];
  page.on('console', (m) => {
    if (m.text().includes('Content Security Policy')) { violations.push(m.text()); }
  });
  // Where a blocked navigation leaves the browser: on an error page, its URL unchanged.
  const landed = async (url, what) => {
    await page.waitForURL(url, { timeout: 10000 }).catch(() => {});
    check(page.url() === url, `${what}: at ${page.url()}, not ${url}; ${violations.join(' | ')}`);
  };

  step('sign in with rd naming another host: land there');
  await page.goto(`${base}/login?rd=${encodeURIComponent(rd)}`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await page.click('form[action="/login"] button[type=submit]');
  await landed(rd, 'after sign-in');

  step('signed in already: /login?rd sends there at once');
  await page.goto(`${base}/login?rd=${encodeURIComponent(rd)}`);
  await landed(rd, 'signed-in visit');

  step('sign out with rd: land there, signed out');
  await page.goto(`${base}/?rd=${encodeURIComponent(rdOut)}`);
  await page.click('form[action="/logout"] button');
  await landed(rdOut, 'after sign-out');
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', `signed out: ${page.url()}`);

  check(violations.length === 0, `CSP violations: ${violations.join(' | ')}`);
  await context.close();
});
