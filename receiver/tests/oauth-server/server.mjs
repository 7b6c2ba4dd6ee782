// A real OAuth 2.0 server for receiver/tests/oauth.rs: oauth2-mock-server (npm), written by
// others, on 127.0.0.1, with a few checks of its own through the library's event hooks.
//
//   node server.mjs [PORT]      prints "issuer: http://127.0.0.1:PORT" once listening
//
// Through the hooks it:
// - authenticates the client: id `flowpack-client`, secret `s3cret:+&/é%` (RFC 6749 §2.3.1: in
//   an HTTP Basic header both are form-urlencoded first, so a client that skips that is
//   refused), by header or body, never both (invalid_client otherwise); a request whose
//   client_id is `public-client` may omit the secret;
// - checks the password grant's user (`alice` / `wonderland`);
// - refuses refresh tokens that were revoked (invalid_grant);
// - counts every token request and records how each client authenticated.
// Control endpoints, under /_test/ (not OAuth):
//   GET  /_test/stats                       {"token_requests", "by_grant", "requests": [...]}
//   POST /_test/reset                       counters and records to zero
//   POST /_test/revoke-all                  every refresh token issued so far becomes invalid
//   POST /_test/config?expires_in=N&delay_ms=N   token lifetime; delay before answering tokens
import http from 'node:http';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const CLIENT_ID = 'flowpack-client';
const CLIENT_SECRET = 's3cret:+&/é%';
const PUBLIC_CLIENT = 'public-client';

const port = Number(process.argv[2] ?? 0);
const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

let stats = { token_requests: 0, by_grant: {}, requests: [] };
let config = { expires_in: 3600, delay_ms: 0 };
const issued = new Set();
const revoked = new Set();

const formDecode = (s) => decodeURIComponent(s.replace(/\+/g, ' '));

function clientOf(req) {
  const h = req.headers.authorization;
  const body = req.body ?? {};
  const inBody = 'client_id' in body || 'client_secret' in body;
  if (h && h.toLowerCase().startsWith('basic ')) {
    const raw = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
    const i = raw.indexOf(':');
    if (i < 0) return { method: 'header', ok: false };
    let id, secret;
    try {
      id = formDecode(raw.slice(0, i));
      secret = formDecode(raw.slice(i + 1));
    } catch {
      return { method: 'header', ok: false };
    }
    return { method: inBody ? 'both' : 'header', id, ok: !inBody && id === CLIENT_ID && secret === CLIENT_SECRET };
  }
  if (inBody) {
    const id = body.client_id;
    if (id === PUBLIC_CLIENT && !('client_secret' in body)) return { method: 'body', id, ok: true };
    return { method: 'body', id, ok: id === CLIENT_ID && body.client_secret === CLIENT_SECRET };
  }
  return { method: 'none', ok: false };
}

service.on('beforeResponse', (response, req) => {
  const body = req.body ?? {};
  const grant = body.grant_type;
  const client = clientOf(req);
  stats.token_requests += 1;
  stats.by_grant[grant] = (stats.by_grant[grant] ?? 0) + 1;
  stats.requests.push({
    grant_type: grant,
    client_auth: client.method,
    client_id: client.id ?? null,
    has_code_verifier: 'code_verifier' in body,
    redirect_uri: body.redirect_uri ?? null,
    scope: body.scope ?? null,
  });
  const refuse = (status, error, description) => {
    response.statusCode = status;
    response.body = { error, error_description: description };
  };
  if (!client.ok) return refuse(401, 'invalid_client', 'client authentication failed');
  if (grant === 'password' && !(body.username === 'alice' && body.password === 'wonderland')) {
    return refuse(400, 'invalid_grant', 'wrong username or password');
  }
  if (grant === 'refresh_token' && revoked.has(body.refresh_token)) {
    return refuse(400, 'invalid_grant', 'the refresh token was revoked');
  }
  if (response.statusCode === 200) {
    response.body.expires_in = config.expires_in;
    if (response.body.refresh_token) issued.add(response.body.refresh_token);
  }
});

function control(req, res) {
  const url = new URL(req.url, 'http://x');
  const send = (v) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(v));
  };
  switch (`${req.method} ${url.pathname}`) {
    case 'GET /_test/stats':
      return send(stats);
    case 'POST /_test/reset':
      stats = { token_requests: 0, by_grant: {}, requests: [] };
      return send(stats);
    case 'POST /_test/revoke-all':
      for (const t of issued) revoked.add(t);
      return send({ revoked: revoked.size });
    case 'POST /_test/config':
      for (const k of ['expires_in', 'delay_ms']) {
        if (url.searchParams.has(k)) config[k] = Number(url.searchParams.get(k));
      }
      return send(config);
    default:
      res.writeHead(404);
      res.end();
  }
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/_test/')) return control(req, res);
  if (req.method === 'POST' && req.url.startsWith('/token') && config.delay_ms > 0) {
    // Hold the answer so that concurrent callers pile up while one request is in flight.
    return setTimeout(() => service.requestHandler(req, res), config.delay_ms);
  }
  return service.requestHandler(req, res);
});
server.listen(port, '127.0.0.1', () => {
  issuer.url = `http://127.0.0.1:${server.address().port}`;
  console.log(`issuer: ${issuer.url}`);
});
// The test closes our standard input when it is done: exit then, so no server outlives it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
