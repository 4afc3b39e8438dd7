// Unit tests of the SDK's pure state machines (gaps, dedupe, backoff, outbox), against the built module.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SyncEngine, Outbox, backoffDelay, MemoryOutboxStore, MAX_HELD } from '../dist/rookery.js';

const m = (conv, seq, extra = {}) => ({ conv, seq, from: 'bob', ts: seq, body: { text: `m${seq}` }, ...extra });
const delivered = (effects) => effects.filter((e) => e.kind === 'deliver').map((e) => e.msg.seq);
const acks = (effects) => effects.filter((e) => e.kind === 'ack').map((e) => e.seq);
const pulls = (effects) => effects.filter((e) => e.kind === 'pull').map((e) => e.after);
const C = 'dm:alice:bob';

test('in-order pushes are delivered and acknowledged cumulatively', () => {
  const s = new SyncEngine();
  s.onConvs([{ conv: C, last_seq: 3, read_seq: 3, unread: 0, last: null }]);
  const e = s.onMessage(m(C, 4));
  assert.deepEqual(delivered(e), [4]);
  assert.deepEqual(acks(e), [4]);
  assert.deepEqual(delivered(s.onMessage(m(C, 5))), [5]);
  assert.equal(s.have(C), 5);
});

test('a seq it already has is dropped but acknowledged again', () => {
  const s = new SyncEngine();
  s.onMessage(m(C, 1));
  s.onMessage(m(C, 2));
  const again = s.onMessage(m(C, 2));
  assert.deepEqual(delivered(again), []);
  assert.deepEqual(acks(again), [2]);
  assert.deepEqual(delivered(s.onMessage(m(C, 1))), []);
});

test('a gap is pulled once, later pushes are held, and the pull fills the gap in order', () => {
  const s = new SyncEngine();
  s.onConvs([{ conv: C, last_seq: 2, read_seq: 2, unread: 0, last: null }]);
  const e5 = s.onMessage(m(C, 5));
  assert.deepEqual(delivered(e5), []);
  assert.deepEqual(pulls(e5), [2]);
  // another push above the gap while the pull is in flight: held, no second pull
  const e6 = s.onMessage(m(C, 6));
  assert.deepEqual(pulls(e6), []);
  assert.deepEqual(delivered(e6), []);
  // the pull returns 3..6 (5 and 6 again): everything once, in order, one ack
  const p = s.onPulled(C, [m(C, 3), m(C, 4), m(C, 5), m(C, 6)], 6);
  assert.deepEqual(delivered(p), [3, 4, 5, 6]);
  assert.deepEqual(acks(p), [6]);
  assert.deepEqual(pulls(p), []);
  assert.equal(s.have(C), 6);
});

test('a pull that returns a full page pulls on until the server has no more', () => {
  const s = new SyncEngine();
  s.onConvs([{ conv: C, last_seq: 0, read_seq: 0, unread: 0, last: null }]);
  assert.deepEqual(pulls(s.onNotify(C, 5)), [0]);
  const p1 = s.onPulled(C, [m(C, 1), m(C, 2)], 5);
  assert.deepEqual(delivered(p1), [1, 2]);
  assert.deepEqual(pulls(p1), [2]);
  const p2 = s.onPulled(C, [m(C, 3), m(C, 4), m(C, 5)], 5);
  assert.deepEqual(delivered(p2), [3, 4, 5]);
  assert.deepEqual(pulls(p2), []);
  // an empty page ends the pulling even if last_seq says more (no busy loop)
  assert.deepEqual(pulls(s.onPulled(C, [], 9)), []);
});

test('notify pulls only when the server has more, and not twice at once', () => {
  const s = new SyncEngine();
  s.onConvs([{ conv: 'g:big', last_seq: 10, read_seq: 10, unread: 0, last: null }]);
  assert.deepEqual(pulls(s.onNotify('g:big', 10)), []);
  assert.deepEqual(pulls(s.onNotify('g:big', 12)), [10]);
  assert.deepEqual(pulls(s.onNotify('g:big', 13)), []);
  s.onPullFailed('g:big');
  assert.deepEqual(pulls(s.wantPull('g:big')), [10]);
});

test('first conversation list is history; after a reconnect, every conversation that moved is pulled', () => {
  const s = new SyncEngine();
  const first = s.onConvs([
    { conv: C, last_seq: 7, read_seq: 7, unread: 0, last: null },
    { conv: 'g:team', last_seq: 3, read_seq: 1, unread: 2, last: null },
  ]);
  assert.deepEqual(first, []);
  s.onDisconnect();
  const again = s.onConvs([
    { conv: C, last_seq: 9, read_seq: 7, unread: 2, last: null },
    { conv: 'g:team', last_seq: 3, read_seq: 3, unread: 0, last: null },
    { conv: 'g:new', last_seq: 120, read_seq: 0, unread: 120, last: null },
  ]);
  assert.deepEqual(
    again.map((e) => [e.conv, e.after]),
    [
      [C, 7],
      ['g:new', 70],
    ],
  );
});

test('disconnect clears a pull in flight so the next connection pulls again', () => {
  const s = new SyncEngine();
  s.onConvs([{ conv: C, last_seq: 1, read_seq: 1, unread: 0, last: null }]);
  assert.deepEqual(pulls(s.onMessage(m(C, 3))), [1]);
  s.onDisconnect();
  assert.deepEqual(pulls(s.onConvs([{ conv: C, last_seq: 3, read_seq: 1, unread: 2, last: null }])), [1]);
});

test('held messages are bounded', () => {
  const s = new SyncEngine();
  s.onMessage(m(C, 1));
  for (let i = 3; i < MAX_HELD + 100; i++) s.onMessage(m(C, i));
  const p = s.onPulled(C, [m(C, 2)], MAX_HELD + 99);
  // 2 and the held run after it are delivered; what did not fit is pulled
  assert.equal(delivered(p)[0], 2);
  assert.ok(delivered(p).length <= MAX_HELD + 1);
  assert.deepEqual(pulls(p), [s.have(C)]);
});

test('backoff grows exponentially, stays within [ceiling/2, ceiling] and the cap, and is jittered', () => {
  const opts = { baseMs: 500, maxMs: 30_000 };
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(30_000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, opts, () => 0), ceiling / 2);
    assert.equal(backoffDelay(attempt, opts, () => 0.999999), Math.round(ceiling * 0.9999995));
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, opts);
      assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${attempt}: ${d}`);
    }
  }
  const spread = new Set(Array.from({ length: 100 }, () => backoffDelay(6, opts)));
  assert.ok(spread.size > 50, 'delays are spread, not synchronized');
  assert.ok(backoffDelay(1000, opts) <= 30_000);
});

test('outbox: a message queued offline is sent once per connection and removed on sent', () => {
  const o = new Outbox();
  o.add({ cid: 'c1', conv: C, body: { text: 'hi' }, created: 1 });
  // connection 1: sent, then the connection drops before `sent`
  assert.deepEqual(o.due().map((e) => e.cid), ['c1']);
  assert.deepEqual(o.due(), [], 'not sent twice on one connection');
  o.onDisconnect();
  // connection 2: the same cid again (the server stores it once)
  assert.deepEqual(o.due().map((e) => e.cid), ['c1']);
  assert.equal(o.onSent('c1').cid, 'c1');
  o.onDisconnect();
  assert.deepEqual(o.due(), [], 'never again after sent');
});

test('outbox: one in flight per conversation, in order; conversations in parallel', () => {
  const o = new Outbox();
  o.add({ cid: 'a1', conv: 'A', body: {}, created: 1 });
  o.add({ cid: 'a2', conv: 'A', body: {}, created: 2 });
  o.add({ cid: 'b1', conv: 'B', body: {}, created: 3 });
  assert.deepEqual(o.due().map((e) => e.cid), ['a1', 'b1']);
  o.onSent('a1');
  assert.deepEqual(o.due().map((e) => e.cid), ['a2']);
});

test('outbox: retryable errors keep the entry, others fail it and let the next go', () => {
  const o = new Outbox();
  o.add({ cid: 'x', conv: 'A', body: {}, created: 1 });
  o.add({ cid: 'y', conv: 'A', body: {}, created: 2 });
  o.due();
  assert.equal(o.onError('x', 'unavailable'), 'retry');
  assert.deepEqual(o.due().map((e) => e.cid), ['x']);
  assert.equal(o.onError('x', 'not_friends'), 'failed');
  assert.equal(o.get('x').failed, 'not_friends');
  assert.deepEqual(o.due().map((e) => e.cid), ['y']);
  o.retry('x');
  o.onDisconnect();
  assert.deepEqual(o.due().map((e) => e.cid), ['x']);
});

test('outbox: restore from a store keeps creation order and ignores repeats', async () => {
  const store = new MemoryOutboxStore();
  await store.put({ cid: 'late', conv: 'A', body: {}, created: 5 });
  await store.put({ cid: 'early', conv: 'A', body: {}, created: 1 });
  const o = new Outbox();
  o.restore(await store.load());
  o.restore(await store.load());
  assert.deepEqual(o.entries().map((e) => e.cid), ['early', 'late']);
  assert.deepEqual(o.due().map((e) => e.cid), ['early']);
});
