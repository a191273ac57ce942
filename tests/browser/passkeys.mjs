// Passkeys, and the device cookie Chromium keeps, in a real browser (issue 14): Debian's
// headless Chromium driven by playwright-core,
// with Chrome's virtual WebAuthn authenticator (DevTools `WebAuthn` domain: CTAP2, internal
// transport, resident keys, user verification). Run by tests/api/browser.rs against a server
// it started; never downloads a browser.
//
// Environment: PORTCULLIS_URL (https://localhost:PORT), PORTCULLIS_USER, PORTCULLIS_PASSWORD,
// PORTCULLIS_CHROMIUM (default /usr/bin/chromium), PORTCULLIS_SCREENSHOTS (a directory; none
// taken when unset), PORTCULLIS_SECOND_FACTOR=1 to also sign in with password + passkey.
// Prints one line per step; exits non-zero at the first failure.
import path from 'node:path';
import { check, inChromium, step } from './common.mjs';

const base = process.env.PORTCULLIS_URL;
const user = process.env.PORTCULLIS_USER;
const password = process.env.PORTCULLIS_PASSWORD;
const shots = process.env.PORTCULLIS_SCREENSHOTS || '';
const secondFactor = process.env.PORTCULLIS_SECOND_FACTOR === '1';
if (!base || !user || !password) {
  console.error('PORTCULLIS_URL, PORTCULLIS_USER and PORTCULLIS_PASSWORD are required');
  process.exit(2);
}

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

async function shoot(page, name) {
  if (!shots) { return; }
  for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(size);
    await page.screenshot({ path: path.join(shots, `${name}-${label}.png`), fullPage: true });
  }
  await page.setViewportSize(DESKTOP);
}

async function signInWithPassword(page, pass) {
  await page.goto(`${base}/login`);
  await page.fill('#username', user);
  await page.fill('#password', pass);
  await Promise.all([page.waitForLoadState('load'), page.click('form[action="/login"] button[type=submit]')]);
}

// A virtual authenticator (CTAP2, internal, resident keys, user verification) in `page`'s
// context, holding `credential` if given (a copy of another's, with its signature counter).
async function authenticatorIn(context, page, credential) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, automaticPresenceSimulation: true },
  });
  if (credential) { await cdp.send('WebAuthn.addCredential', { authenticatorId, credential }); }
  return { cdp, authenticatorId };
}

// A browser context with a copy of `credential` on a login page with its passkey button shown.
async function copyOnLoginPage(browser, credential) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: DESKTOP });
  const page = await context.newPage();
  await authenticatorIn(context, page, credential);
  await page.goto(`${base}/login`);
  const button = page.locator('form[data-passkey="get"] button[type=submit]');
  await button.waitFor({ state: 'visible' });
  return { context, page, button };
}

async function signOut(page) {
  await page.goto(`${base}/`);
  await Promise.all([page.waitForURL(`${base}/login`), page.click('form[action="/logout"] button')]);
}

await inChromium([], async (browser) => {
  // The development certificate is self-signed (it names localhost).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: DESKTOP });
  const page = await context.newPage();
  const scriptErrors = [];
  page.on('pageerror', (e) => scriptErrors.push(String(e)));
  // Console errors, but not the network ones the wrong passwords cause on purpose (401).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) { scriptErrors.push(m.text()); }
  });

  const { cdp, authenticatorId } = await authenticatorIn(context, page);

  step('sign in with the password');
  await signInWithPassword(page, password);
  check(page.url() === `${base}/`, `after the password: ${page.url()}`);

  step('register a passkey on the account page');
  await page.goto(`${base}/account`);
  await shoot(page, 'account-empty');
  const add = page.locator('form[data-passkey="create"] button[type=submit]');
  await add.waitFor({ state: 'visible' });
  await page.fill('#passkey-name', 'Virtual authenticator');
  // The first second factor comes with recovery codes, shown once.
  await Promise.all([page.waitForURL(`${base}/account/passkeys`, { waitUntil: 'load' }), add.click()]);
  await page.waitForSelector('text=Your passkey is added.');
  check(await page.locator('ol.codes li').count() === 10, 'ten recovery codes shown');
  await shoot(page, 'recovery-codes');
  await Promise.all([page.waitForURL(`${base}/account`, { waitUntil: 'load' }), page.click('text=I have saved them')]);
  await page.waitForSelector('text=Virtual authenticator');
  check(await page.locator('.passkey-list li').count() === 1, 'one passkey listed');
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
  check(credentials.length === 1 && credentials[0].isResidentCredential, 'one resident credential on the authenticator');
  await shoot(page, 'account');

  step('adding a passkey this device already holds is said plainly');
  await page.fill('#passkey-name', 'Again');
  await add.click();
  // The browser's InvalidStateError (the excluded credential) reads as technical text.
  await page.waitForSelector('text=This device already holds a passkey for your account');
  check(await page.locator('.passkey-list li').count() === 1, 'still one passkey listed');
  check(await page.evaluate(() => document.activeElement?.matches('form[data-passkey="create"] button[type=submit]')),
    'the focus is back on the button after a refused ceremony');

  step('sign out');
  await signOut(page);
  await shoot(page, 'login');

  step('a passkey asked for at the address of the server, not its name, is said plainly');
  // The relying party is `localhost`: at 127.0.0.1 the browser refuses with a bare "invalid
  // domain" (review 213); the page says where passkeys work instead.
  await page.goto(`${base.replace('//localhost', '//127.0.0.1')}/login`);
  await page.locator('form[data-passkey="get"] button[type=submit]').click();
  await page.waitForSelector('text=Passkeys for this server work only at localhost (and names under it), not at 127.0.0.1');

  step('the device cookie outlives the sign-out, host-only, for 90 days');
  const jar = async () => context.cookies(base);
  const deviceCookie = async () => (await jar()).find((c) => c.name === '__Host-portcullis-device');
  const device = await deviceCookie();
  const { value: _, ...attributes } = device || {};
  check(device && device.httpOnly && device.secure && device.sameSite === 'Lax' && device.path === '/'
    && device.domain === new URL(base).hostname && device.expires > Date.now() / 1000 + 89 * 86400,
  `device cookie: ${JSON.stringify(attributes)}`);
  check(!(await jar()).some((c) => c.name === '__Host-portcullis'), 'the session cookie is gone');

  if (secondFactor) {
    step('password, then the passkey as the second factor');
    await signInWithPassword(page, password);
    check(page.url().startsWith(`${base}/login/second-factor`), `after the password: ${page.url()}`);
    await shoot(page, 'second-factor');
    const second = page.locator('form[data-passkey="get"] button[type=submit]');
    await second.waitFor({ state: 'visible' });
    await Promise.all([page.waitForURL(`${base}/`, { waitUntil: 'load' }), second.click()]);
    check((await page.textContent('h1')).includes(user), 'signed in with password and passkey');
    await signOut(page);
  }

  step('fail three times with a wrong password: the captcha is demanded');
  for (let i = 0; i < 3; i++) {
    await signInWithPassword(page, 'not the password at all');
  }
  await page.goto(`${base}/login`);
  check(await page.locator('#captcha').count() === 1, 'the password form demands a captcha');
  await shoot(page, 'login-captcha');

  step('sign in with the passkey: no username, no password, no captcha');
  const passkeyButton = page.locator('form[data-passkey="get"] button[type=submit]');
  await passkeyButton.waitFor({ state: 'visible' });
  await Promise.all([page.waitForURL(`${base}/`, { waitUntil: 'load' }), passkeyButton.click()]);
  check((await page.textContent('h1')).includes(user), 'the home page greets the user');
  const renewed = await deviceCookie();
  check(renewed && renewed.value !== device.value, 'a passkey sign-in renews the device cookie');

  step('a copy of the passkey signs in another browser');
  const [stolen] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  const { context: thief, page: thiefPage, button: thiefButton } = await copyOnLoginPage(browser, stolen);
  await Promise.all([thiefPage.waitForURL(`${base}/`, { waitUntil: 'load' }), thiefButton.click()]);

  step('a second copy, made before the first was used, is behind on the counter: refused, and the passkey flagged');
  const late = await copyOnLoginPage(browser, stolen);
  await late.button.click();
  await late.page.waitForSelector('text=That passkey was not accepted');
  check(late.page.url().startsWith(`${base}/login`), `the late copy signs nobody in: ${late.page.url()}`);
  await late.context.close();
  await page.goto(`${base}/account`);
  check(await page.locator('.passkey-clone').count() === 1, 'the account page flags the passkey');
  await shoot(page, 'account-passkey-flagged');
  step('a 64-character name without a space keeps the sessions table inside the card');
  const longName = 'W'.repeat(64);
  await page.fill('form[action="/account/passkeys/rename"] input[name=name]', longName);
  await Promise.all([page.waitForURL(`${base}/account#passkeys-heading`, { waitUntil: 'load' }),
    page.click('form[action="/account/passkeys/rename"] button[type=submit]')]);
  await page.waitForSelector(`text=Your passkey is renamed \u201c${longName}\u201d.`);
  const withCells = await page.locator('table.sessions .with').allTextContents();
  check(withCells.filter((t) => t === `with passkey \u201c${longName}\u201d`).length === 2,
    `both sessions say the passkey signed them in: ${JSON.stringify(withCells)}`);
  const overflow = await page.evaluate(() => {
    const table = document.querySelector('table.sessions').getBoundingClientRect();
    const card = document.querySelector('.card').getBoundingClientRect();
    return table.right - card.right;
  });
  check(overflow <= 0, `the sessions table ends ${overflow}px past the card`);

  step('removing the passkey signs that browser out');
  await shoot(page, 'account-sessions');
  // Already at /account#passkeys-heading, where the removal answers: the notice says it is done.
  // The removal asks once more: its button only opens what it takes and the button that does it.
  const removeButton = page.locator('form[action="/account/passkeys/remove"] button[type=submit]');
  check(!(await removeButton.isVisible()), 'the removal is not one click: its button is hidden until asked for');
  await page.click(`summary[aria-label="Remove ${longName}"]`);
  check(await page.isVisible('text=It is your only second factor: signing in will ask for your password alone'),
    'opening the removal says it is the only second factor');
  await shoot(page, 'account-passkey-remove-confirm');
  await removeButton.click();
  await page.waitForSelector('text=the other session signed in with it is signed out');
  await shoot(page, 'account-passkey-removed');
  await thiefPage.goto(`${base}/`);
  check(thiefPage.url().startsWith(`${base}/login`), `the copy's session is over: ${thiefPage.url()}`);
  await page.goto(`${base}/`);
  check(page.url() === `${base}/`, 'the browser that removed it stays signed in');
  await thief.close();

  check(scriptErrors.length === 0, `script errors: ${scriptErrors.join(' | ')}`);
  await context.close();
});
