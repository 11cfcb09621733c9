// Preload for the conformance harness in client mode (`node -r bind_localhost.cjs ...`).
//
// The harness's mock servers call `listen(0)` on every interface. This forces every
// net/http listen() onto 127.0.0.1 and, with PORT_BASE set, hands out PORT_BASE,
// PORT_BASE+1, ... for ephemeral requests. Binding to an explicit host makes Node look
// the host up asynchronously, so `address()` is null right after `listen()`; the harness
// reads it synchronously, so `address()` answers from the port we chose until then.
// Always set PORT_BASE (run_client.py picks a free block per harness run).
'use strict';
const net = require('net');

const LOOP = '127.0.0.1';
const origListen = net.Server.prototype.listen;
const origAddress = net.Server.prototype.address;
let next = process.env.PORT_BASE ? parseInt(process.env.PORT_BASE, 10) : null;
const WILDCARD = new Set(['0.0.0.0', '::', 'localhost', '']);

net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  const isPort = typeof a0 === 'number' || (typeof a0 === 'string' && /^\d+$/.test(a0));
  if (isPort) {
    if (next !== null && Number(a0) === 0) args[0] = next++;
    if (typeof args[1] !== 'string') args.splice(1, 0, LOOP);
    else if (WILDCARD.has(args[1])) args[1] = LOOP;
    this.__boundPort = Number(args[0]);
  } else if (a0 && typeof a0 === 'object' && !a0.path && a0.fd === undefined && !a0._handle) {
    const o = { ...a0 };
    if (next !== null && (o.port === undefined || Number(o.port) === 0)) o.port = next++;
    if (!o.host || WILDCARD.has(o.host)) o.host = LOOP;
    args[0] = o;
    this.__boundPort = Number(o.port);
  } else if (a0 === undefined || typeof a0 === 'function') {
    const p = next !== null ? next++ : 0;
    args.unshift(p, LOOP);
    this.__boundPort = p;
  }
  return origListen.apply(this, args);
};

net.Server.prototype.address = function () {
  const a = origAddress.call(this);
  if (a) return a;
  if (this.__boundPort) return { address: LOOP, family: 'IPv4', port: this.__boundPort };
  return a;
};
