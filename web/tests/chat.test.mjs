// The web client in real Chromium against one real node: two users in two browser contexts befriend, chat,
// see ticks, typing and unread counts; offline and back finds everything once; a message typed offline (and
// one left in the outbox across a page reload) is stored exactly once; an image shows its thumbnail; a group.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { startCluster, launchBrowser, openApp, sdkClient, allMessages, makePng, shownTexts, until, SHOTS } from './harness.mjs';

let cluster;
let browser;
let alice;
let bob;
let checker;
const DM = 'dm:alice:bob';

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  cluster = await startCluster(1);
  browser = await launchBrowser();
  alice = await openApp(browser, cluster, 'alice');
  bob = await openApp(browser, cluster, 'bob');
});

after(async () => {
  await checker?.close();
  await browser?.close();
  await cluster?.stop();
});

const texts = (page, text) => shownTexts(page).then((all) => all.filter((t) => t === text).length);

test('befriend, chat with ticks, typing and presence', { timeout: 60_000 }, async () => {
  const a = alice.page;
  const b = bob.page;
  assert.equal(await a.textContent('#me'), 'alice');
  await a.click('#tab-friends');
  await a.fill('#friend-user', 'bob');
  await a.fill('#friend-note', 'hi, it is alice');
  await a.click('#friend-send');
  // bob sees the request counted on his Friends tab, and accepts it
  await b.waitForSelector('#tab-friends .badge');
  await b.click('#tab-friends');
  await b.click('.row.incoming[data-user="alice"] .accept');
  await a.click('.row.friend[data-user="bob"] .message');
  await a.fill('#composer', 'Hi Bob! Lunch at noon? 🍜');
  await a.press('#composer', 'Enter');
  await a.waitForSelector('.msg.mine[data-seq="1"] .ticks');
  // bob: the conversation appears with one unread message; opening it reads it
  await b.click('#tab-chats');
  await b.waitForSelector(`.conv-item[data-conv="${DM}"] .badge.unread[data-unread="1"]`);
  await b.click(`.conv-item[data-conv="${DM}"]`);
  await b.waitForSelector('.msg[data-seq="1"]');
  assert.equal(await texts(b, 'Hi Bob! Lunch at noon? 🍜'), 1);
  // alice: delivered, then read (blue ticks)
  await a.waitForSelector('.msg.mine[data-seq="1"] .ticks[data-state="read"]');
  // bob types: alice sees it in the header and as a bubble
  await b.type('#composer', 'Sure, the usual place', { delay: 20 });
  await a.waitForSelector('#typing');
  await b.press('#composer', 'Enter');
  await a.waitForSelector('.msg[data-seq="2"]');
  assert.equal(await texts(a, 'Sure, the usual place'), 1);
  await a.waitForSelector('#typing', { state: 'detached' });
  // presence: bob's page saw alice come online after they became friends? they were online before: reload bob
  await a.fill('#composer', 'Great, see you there');
  await a.press('#composer', 'Enter');
  await b.waitForSelector('.msg[data-seq="3"]');
  await a.waitForSelector('.msg.mine[data-seq="3"] .ticks[data-state="read"]');
});

test('offline and back: everything written meanwhile arrives once, counted as unread', { timeout: 60_000 }, async () => {
  const a = alice.page;
  const b = bob.page;
  // bob leaves the chat for the list, then loses the network
  await b.keyboard.press('Escape');
  await b.waitForSelector('.welcome');
  await bob.context.setOffline(true);
  await b.waitForSelector('#status[data-state="offline"]');
  // presence: alice sees bob leave, and (below) come back
  await a.waitForSelector('#presence:text("offline")');
  for (const t of ['Are you there?', 'The place is closed today', 'Let us try the new one']) {
    await a.fill('#composer', t);
    await a.press('#composer', 'Enter');
  }
  await a.waitForSelector('.msg.mine[data-seq="6"] .ticks[data-state="sent"]');
  await bob.context.setOffline(false);
  await b.waitForSelector('#status[data-state="online"]', { timeout: 15_000 });
  await a.waitForSelector('#presence:text("online")');
  // bob's client pulled what moved: counted as unread, then every message once, in order
  await b.waitForSelector(`.conv-item[data-conv="${DM}"] .badge.unread[data-unread="3"]`);
  await b.click(`.conv-item[data-conv="${DM}"]`);
  await b.waitForSelector('.msg[data-seq="6"]');
  const shown = await shownTexts(b);
  for (const t of ['Are you there?', 'The place is closed today', 'Let us try the new one']) {
    assert.equal(shown.filter((x) => x === t).length, 1, `${t} once`);
  }
  const seqs = await b.$$eval('.messages .msg[data-seq]', (els) => els.map((e) => Number(e.getAttribute('data-seq'))));
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
  await a.waitForSelector('.msg.mine[data-seq="6"] .ticks[data-state="read"]');
});

test('a message typed offline is sent exactly once when the network returns', { timeout: 60_000 }, async () => {
  const a = alice.page;
  await alice.context.setOffline(true);
  await a.waitForSelector('#status[data-state="offline"]');
  await a.fill('#composer', 'Written on the train, no signal');
  await a.press('#composer', 'Enter');
  await a.waitForSelector('.msg.pending .ticks[data-state="pending"]');
  await new Promise((r) => setTimeout(r, 1500));
  await alice.context.setOffline(false);
  await a.waitForSelector('.msg.mine[data-seq="7"]', { timeout: 15_000 });
  await a.waitForSelector('.msg.pending', { state: 'detached' });
  await bob.page.waitForSelector('.msg[data-seq="7"]');
  checker = await sdkClient(cluster, 'alice', 'checker');
  const all = await allMessages(checker, DM);
  assert.equal(all.filter((m) => m.body?.text === 'Written on the train, no signal').length, 1);
  assert.deepEqual(all.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7]);
});

test('the outbox survives a page reload: sent once by the next page', { timeout: 60_000 }, async () => {
  await alice.context.setOffline(true);
  await alice.page.waitForSelector('#status[data-state="offline"]');
  await alice.page.fill('#composer', 'Typed, then the tab was reloaded');
  await alice.page.press('#composer', 'Enter');
  await alice.page.waitForSelector('.msg.pending');
  // the entry is in IndexedDB before the page goes away
  await until(
    () => alice.page.evaluate(() => window.rookery.pendingMessages().length === 1),
    'the outbox entry',
  );
  await new Promise((r) => setTimeout(r, 300));
  await alice.page.close();
  await alice.context.setOffline(false);
  const page = await alice.context.newPage();
  await page.goto(cluster.url());
  await page.waitForSelector('#status[data-state="online"]');
  alice.page = page;
  await until(async () => {
    const all = await allMessages(checker, DM);
    return all.some((m) => m.body?.text === 'Typed, then the tab was reloaded');
  }, 'the reloaded page to send it');
  await new Promise((r) => setTimeout(r, 1000));
  const all = await allMessages(checker, DM);
  assert.equal(all.filter((m) => m.body?.text === 'Typed, then the tab was reloaded').length, 1);
  assert.equal(await page.evaluate(() => window.rookery.pendingMessages().length), 0);
});

test('an image upload shows its thumbnail on both sides, and opens full size', { timeout: 60_000 }, async () => {
  const a = alice.page;
  await a.click(`.conv-item[data-conv="${DM}"]`);
  await a.waitForSelector('.msg[data-seq="8"]');
  await a.setInputFiles('#file', { name: 'sunset.png', mimeType: 'image/png', buffer: makePng(480, 300) });
  const img = '.msg.mine[data-seq="9"] img.img';
  await a.waitForSelector(img);
  await bob.page.waitForSelector('.msg[data-seq="9"] img.img');
  for (const p of [a, bob.page]) {
    await until(
      () => p.$eval('.msg[data-seq="9"] img.img', (el) => el.complete && el.naturalWidth > 0 && el.src.includes('/thumb')),
      'the thumbnail to load',
    );
    const w = await p.$eval('.msg[data-seq="9"] img.img', (el) => el.naturalWidth);
    assert.ok(w <= 256, `thumbnail at most 256 px wide (got ${w})`);
  }
  await bob.page.click('.msg[data-seq="9"] img.img');
  await until(() => bob.page.$eval('.lightbox img', (el) => el.complete && el.naturalWidth === 480), 'the full image');
  await bob.page.click('.lightbox');
  await a.fill('#composer', 'Look at this sky 😍');
  await a.press('#composer', 'Enter');
  await bob.page.waitForSelector('.msg[data-seq="10"]');
  await a.waitForSelector('.msg.mine[data-seq="10"] .ticks[data-state="read"]');
  await a.screenshot({ path: join(SHOTS, 'test-dm-desktop.png') });
});

test('groups: create with a friend, members, read counts, add a member', { timeout: 60_000 }, async () => {
  const a = alice.page;
  const b = bob.page;
  await a.click('#new-group');
  await a.fill('#group-name', 'Lunch crew');
  await a.check('.dialog input[type="checkbox"][value="bob"]');
  await a.fill('#group-members', 'carol');
  await a.click('#group-create');
  await a.waitForSelector('.chat-head .title:text("Lunch crew")');
  await a.waitForSelector('.system[data-seq="1"]');
  await a.fill('#composer', 'Welcome to the crew, @bob');
  await a.press('#composer', 'Enter');
  await a.waitForSelector('.msg.mine[data-seq="2"]');
  await b.click('.conv-item[data-conv="g:lunch-crew"]');
  await b.waitForSelector('.msg[data-seq="2"]');
  await a.click('#members');
  await a.waitForSelector('.dialog .row.member[data-user="carol"]');
  assert.equal(await a.$$eval('.dialog .row.member', (els) => els.length), 3);
  await a.click('.dialog .btn.gray');
  await a.hover('.msg.mine[data-seq="2"]');
  await a.click('.msg.mine[data-seq="2"] .info-btn');
  await a.waitForSelector('#read-counts');
  // bob has read it, carol has not
  assert.equal(await a.textContent('#read-counts'), 'Read by 1 of 2');
  await a.click('.dialog .btn.gray');
  // the owner adds a member: the system message reaches the owner's page too, and everyone's
  await a.click('#members');
  await a.fill('#add-member', 'dave');
  await a.click('#add-member-go');
  await a.waitForSelector('.dialog .row.member[data-user="dave"]');
  await a.keyboard.press('Escape');
  await a.waitForSelector('.system[data-seq="3"]:text("alice added dave")');
  await b.waitForSelector('.system[data-seq="3"]:text("alice added dave")');
  await a.waitForSelector('.chat-head .sub:text("4 members")');
});

test('phone-sized screen: the list and the chat each take the whole screen', { timeout: 60_000 }, async () => {
  const phone = await openApp(browser, cluster, 'bob', { viewport: { width: 390, height: 844 }, mobile: true });
  const p = phone.page;
  await p.waitForSelector(`.conv-item[data-conv="${DM}"]`);
  assert.equal(await p.isVisible('.main'), false, 'the chat pane is hidden on the list screen');
  await p.click(`.conv-item[data-conv="${DM}"]`);
  await p.waitForSelector('.msg[data-seq="10"]');
  assert.equal(await p.isVisible('.sidebar'), false, 'the list is hidden in a chat');
  await until(() => p.$eval('.msg[data-seq="9"] img.img', (el) => el.complete && el.naturalWidth > 0), 'the thumbnail');
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  assert.equal(overflow, false, 'nothing wider than the screen');
  await p.screenshot({ path: join(SHOTS, 'test-dm-phone.png') });
  await p.click('.back');
  await p.waitForSelector('.sidebar');
  await phone.context.close();
});
