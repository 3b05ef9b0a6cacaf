#!/usr/bin/env node
// `next` of the NeuronDesktop frontend, neurondb.ha reference build: a stand-in
// for Next.js's production server, with the interface a deployment relies on.
//
//   next start [dir] [-p PORT] [-H HOST]
//
// The port comes from -p, else PORT (never SERVER_PORT), else 3000; the host
// from -H/--hostname, else 0.0.0.0. It serves the prebuilt app of dir (default:
// the working directory): GET / is the page prerendered at build time, with the
// API URL compiled in (NEXT_PUBLIC_API_URL of the build); /_next/static/* the
// build's assets. There is no /health and no metrics, as in the real app.
// Only Node's standard library; Node 18 or newer.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

const NOT_BUILT =
  "Error: Could not find a production build in the '.next' directory. " +
  "Try building your app with 'next build' before starting the production server.";
const TYPES = {
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.js': 'application/javascript; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
};

function fail(message) {
  process.stderr.write(message + '\n');
  process.exit(1);
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== 'start') {
    fail(
      command === undefined
        ? 'Usage: next start [dir] [-p PORT] [-H HOST]'
        : `next ${command}: this is a prebuilt app; only \`next start\` is available`,
    );
  }
  const options = { dir: '.', port: undefined, host: '0.0.0.0' };
  for (let i = 0; i < rest.length; i += 1) {
    const arg = rest[i];
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      i += 1;
      if (i >= rest.length) fail(`next start: ${flag} needs a value`);
      return rest[i];
    };
    if (flag === '-p' || flag === '--port') options.port = value();
    else if (flag === '-H' || flag === '--hostname') options.host = value();
    else if (flag === '--keepAliveTimeout') value(); // accepted, as Next.js does; Node's default applies
    else if (flag.startsWith('-')) fail(`next start: unknown option ${flag}`);
    else options.dir = arg;
  }
  const raw = options.port ?? process.env.PORT ?? '3000';
  if (!/^\d+$/.test(String(raw)) || Number(raw) < 1 || Number(raw) > 65535) {
    fail(`next start: invalid port ${JSON.stringify(raw)} (-p or PORT)`);
  }
  options.port = Number(raw);
  return options;
}

function notFound(res) {
  const body = '<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head>' +
    '<body><h1>404</h1><h2>This page could not be found.</h2></body></html>';
  res.writeHead(404, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function sendFile(req, res, file, cacheControl) {
  fs.readFile(file, (err, data) => {
    if (err) {
      notFound(res);
      return;
    }
    const type = TYPES[path.extname(file)] || 'application/octet-stream';
    res.writeHead(200, { 'Content-Type': type, 'Content-Length': data.length, 'Cache-Control': cacheControl });
    res.end(req.method === 'HEAD' ? undefined : data);
  });
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const appDir = path.resolve(options.dir);
  const nextDir = path.join(appDir, '.next');
  let buildId;
  try {
    buildId = fs.readFileSync(path.join(nextDir, 'BUILD_ID'), 'utf8').trim();
  } catch {
    fail(NOT_BUILT);
  }
  const staticDir = path.join(nextDir, 'static');
  const indexFile = path.join(nextDir, 'server', 'app', 'index.html');
  const started = Date.now();

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    res.setHeader('X-Powered-By', 'Next.js');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Length': 0 });
      res.end();
      return;
    }
    if (url.pathname === '/') {
      sendFile(req, res, indexFile, 's-maxage=31536000, stale-while-revalidate');
      return;
    }
    if (url.pathname.startsWith('/_next/static/')) {
      const file = path.normalize(path.join(staticDir, decodeURIComponent(url.pathname.slice('/_next/static/'.length))));
      // No way out of the static directory with ../ or an encoded slash.
      if (file.startsWith(staticDir + path.sep)) {
        sendFile(req, res, file, 'public, max-age=31536000, immutable');
        return;
      }
    }
    notFound(res);
  });

  server.on('error', (err) => fail(`Error: failed to start server: ${err.message}`));
  server.listen(options.port, options.host, () => {
    process.stdout.write(
      `  \u25b2 Next.js 14 (neurondb.ha reference stand-in, build ${buildId})\n` +
        `  - Local:        http://${options.host}:${options.port}\n\n` +
        ` \u2713 Ready in ${Date.now() - started}ms\n`,
    );
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close(() => process.exit(0));
    server.closeIdleConnections?.();
    // Open keep-alive or slow connections must not hold the stop up for long.
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
