// The negative control's extra hop: an HTTP/1.1 proxy that forwards every request (plain and
// WebSocket upgrade) unchanged except that it drops X-Forwarded-Host and Forwarded.
//
//   node tests/e2e/drop_forwarded_host.mjs --listen PORT --upstream HOST:PORT --log FILE
//
// Behind edgegate with preserve_host = false, the upstream then sees what a proxy that rewrites
// Host without X-Forwarded-Host sends: Host = the upstream's address, Origin = the browser's.
// code-server refuses such WebSockets (403) and the browser reports 1006; the browser checks
// must catch that. One JSON line per upgrade (with the upstream's status) goes to --log.

import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
const [upHost, upPortText] = args.upstream.split(':');
const upPort = Number(upPortText);
const DROP = new Set(['x-forwarded-host', 'forwarded']);

function note(entry) {
  fs.appendFileSync(args.log, JSON.stringify({ at: new Date().toISOString(), ...entry }) + '\n');
}

function keptRaw(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) {
    if (!DROP.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const agent = new http.Agent({ keepAlive: true });

const server = http.createServer((req, res) => {
  const raw = keptRaw(req.rawHeaders);
  const headers = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    headers[k] = headers[k] === undefined ? raw[i + 1] : `${headers[k]}, ${raw[i + 1]}`;
  }
  const up = http.request(
    { host: upHost, port: upPort, method: req.method, path: req.url, headers, agent },
    (ur) => {
      res.writeHead(ur.statusCode, ur.rawHeaders);
      ur.pipe(res);
    },
  );
  up.on('error', () => res.destroy());
  req.pipe(up);
});

server.on('upgrade', (req, client, head) => {
  const upstream = net.connect(upPort, upHost, () => {
    const raw = keptRaw(req.rawHeaders);
    let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < raw.length; i += 2) head0 += `${raw[i]}: ${raw[i + 1]}\r\n`;
    upstream.write(head0 + '\r\n');
    if (head && head.length) upstream.write(head);
    let first = true;
    upstream.on('data', (chunk) => {
      if (first) {
        first = false;
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(chunk.toString('latin1'))?.[1]);
        note({ event: 'upgrade', url: req.url.split('?')[0], host: req.headers.host,
          origin: req.headers.origin, status });
      }
      client.write(chunk);
    });
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
  });
  const kill = () => { client.destroy(); upstream.destroy(); };
  upstream.on('error', kill);
  client.on('error', kill);
  upstream.on('close', () => client.destroy());
  client.on('close', () => upstream.destroy());
});

server.listen(Number(args.listen), '127.0.0.1', () => note({ event: 'listening', port: Number(args.listen) }));
