// The README's screenshots: a lived-in conversation (seeded through the SDK from Node), seen in Chromium on a
// desktop and on a phone-sized screen. Also checks what the screenshots show: ticks, a thumbnail, typing,
// unread counts in the list. The committed files (web/screenshots/chat-*.png) are rewritten only with
// UPDATE_SCREENSHOTS=1; other runs write test-chat-*.png beside them (ignored by git).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { startCluster, launchBrowser, openApp, sdkClient, makePng, until, sleep, SHOTS } from './harness.mjs';

let cluster;
let browser;
const clients = [];
const shot = (name) => join(SHOTS, process.env.UPDATE_SCREENSHOTS === '1' ? name : `test-${name}`);

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  cluster = await startCluster(1);
  browser = await launchBrowser();
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  await cluster?.stop();
});

/** A sunset over hills, 480 x 320. */
function sunset() {
  const w = 480;
  const h = 320;
  return makePng(w, h, (x, y) => {
    const t = y / h;
    let c = [255 - 60 * t, 150 - 90 * t + 40 * (1 - t), 90 + 110 * t];
    const d = Math.hypot(x - 300, y - 190);
    if (d < 46) c = [255, 214, 120];
    else if (d < 90) c = c.map((v, i) => v + ((90 - d) / 90) * [60, 50, 10][i]);
    const far = 215 + 28 * Math.sin(x / 55) + 12 * Math.sin(x / 17);
    const near = 250 + 30 * Math.sin((x + 120) / 70);
    if (y > near) c = [38, 52, 70];
    else if (y > far) c = [86, 82, 118];
    return c;
  });
}

test('screenshots: desktop and phone', { timeout: 90_000 }, async () => {
  const maya = await sdkClient(cluster, 'maya', 'phone');
  const leo = await sdkClient(cluster, 'leo', 'laptop');
  const sam = await sdkClient(cluster, 'sam', 'laptop');
  clients.push(maya, leo, sam);
  await maya.friendRequest('leo', 'hiking buddy?');
  await leo.friendAccept('maya');
  await maya.friendRequest('sam');
  await sam.friendAccept('maya');
  await maya.groupCreate('g:weekend-hike', 'Weekend hike', ['leo', 'sam']);
  const dm = 'dm:leo:maya';
  await leo.send(dm, { text: 'Morning! Did you see the forecast for Saturday?' });
  await maya.send(dm, { text: 'Sunny and 22°, perfect for the ridge trail ☀️' });
  await leo.send(dm, { text: 'Then it is settled. Bring the good camera?' });
  const media = await maya.upload(sunset(), { mime: 'image/png', name: 'sunset.png' });
  await maya.send(dm, { kind: 'image', media, w: 480, h: 320 });
  await maya.send(dm, { text: 'Last night from the balcony. The new lens is sharp' });
  await leo.send(dm, { text: 'Wow, that is gorgeous 😍' });
  const last = await maya.send(dm, { text: 'Leaving at 8, I will pick you up 🚗' });
  leo.read(dm, last.seq);
  await sam.send('g:weekend-hike', { text: 'Who is bringing snacks? 🍫' });
  await sam.send('g:weekend-hike', { text: 'I can do sandwiches' });
  await sam.send('dm:maya:sam', { text: 'Can I borrow your tent next week?' });

  const desk = await openApp(browser, cluster, 'maya');
  const p = desk.page;
  await p.waitForSelector('.conv-item[data-conv="g:weekend-hike"] .badge.unread[data-unread="2"]');
  await p.waitForSelector('.conv-item[data-conv="dm:maya:sam"] .badge.unread[data-unread="1"]');
  await p.click(`.conv-item[data-conv="${dm}"]`);
  await p.waitForSelector(`.msg.mine[data-seq="${last.seq}"] .ticks[data-state="read"]`);
  await until(() => p.$eval('.msg img.img', (el) => el.complete && el.naturalWidth > 0), 'the thumbnail');
  leo.typing(dm);
  await p.waitForSelector('#typing');
  await p.mouse.move(0, 0);
  await p.screenshot({ path: shot('chat-desktop.png') });

  const phone = await openApp(browser, cluster, 'leo', { viewport: { width: 390, height: 844 }, mobile: true });
  const q = phone.page;
  await q.click(`.conv-item[data-conv="${dm}"]`);
  await q.waitForSelector(`.msg[data-seq="${last.seq}"]`);
  await until(() => q.$eval('.msg img.img', (el) => el.complete && el.naturalWidth > 0), 'the thumbnail');
  maya.typing(dm);
  await q.waitForSelector('#typing');
  await sleep(200);
  await q.screenshot({ path: shot('chat-phone.png') });
  assert.equal(await q.evaluate(() => document.documentElement.scrollWidth > window.innerWidth), false);
});

test('history loads as you scroll up, each message once; react on any message, edit on none of the others', { timeout: 60_000 }, async () => {
  const sam = clients[2];
  const conv = 'dm:maya:sam';
  for (let i = 1; i <= 100; i++) await sam.send(conv, { text: `old news ${i}` });
  const { page } = await openApp(browser, cluster, 'maya', { viewport: { width: 1000, height: 700 } });
  await page.click(`.conv-item[data-conv="${conv}"]`);
  await page.waitForSelector('.msg[data-seq="101"]');
  const first = await page.$$eval('.messages .msg[data-seq]', (els) => els.length);
  assert.ok(first < 101, `the first page is not everything (${first})`);
  await until(async () => {
    await page.$eval('#messages', (el) => (el.scrollTop = 0));
    return page.$('.history-end');
  }, 'the beginning of the conversation', 20_000);
  const seqs = await page.$$eval('.messages .msg[data-seq]', (els) => els.map((e) => Number(e.getAttribute('data-seq'))));
  assert.deepEqual(seqs, Array.from({ length: 101 }, (_, i) => i + 1));
  // the server serves `edit` and `react` (issue 16): reactions on sam's message, but no Edit (not maya's)
  const supports = await page.evaluate(async () => [await window.rookery.supports('edit'), await window.rookery.supports('react')]);
  assert.deepEqual(supports, [true, true]);
  await page.hover('.msg[data-seq="101"]');
  await until(
    async () => (await page.$$eval('.msg[data-seq="101"] .actions button[title^="React"]', (els) => els.length)) > 0,
    'react buttons on the message',
    10_000,
  );
  assert.equal(await page.$$eval('.msg[data-seq="101"] .actions button:text("Edit")', (els) => els.length), 0);
});
