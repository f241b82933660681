// A real OpenID provider (oidc-provider 9) for Portcullis's OIDC tests. See README.md.
//
// Usage: node provider.js [port]   (or PORT=<port>; 0 or nothing picks a free port)
// Prints `READY http://127.0.0.1:<port>` on stdout once it serves requests.
//
// One HTTP server owns the port for the whole run; requests go to the current oidc-provider
// instance. `POST /test/rotate` builds a new instance with fresh keys (the previous generation
// stays published after them, as a real rotation would) and swaps it in, so the port and issuer
// never change and no connection is refused while rotating.
//
// Test-only endpoints (not part of oidc-provider; they hand out private keys, so this file must
// never serve anything but tests):
// - `GET /test/keys`: the published keys with their private halves, so a test can mint tokens
//   (hostile and well-formed) signed exactly as the provider signs: `{"keys":[{"jwk": <private
//   JWK>, "pkcs8": <hex DER>, "spki_pem": <PEM>, "spki_der": <hex DER>, "pkcs1_pem": <PEM,
//   RSA only>}]}`.
// - `GET /test/token-count`: `{"count": n}`, how many token requests were made (a gateway
//   fetching tokens for a backend must reuse them). `OIDC_ACCESS_TOKEN_TTL` sets the tokens'
//   lifetime in seconds (default 3600).
// - `GET /test/jwks-count`: `{"count": n}`, how many JWKS requests were served, so a test can
//   bound the fetches a flood of unknown `kid`s causes.

import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

/** Lifetime of access tokens in seconds (`OIDC_ACCESS_TOKEN_TTL`; short ones test refreshes). */
const ACCESS_TOKEN_TTL = Number(process.env.OIDC_ACCESS_TOKEN_TTL ?? 3600);

/** The audience (RFC 8707 resource indicator) every access token is issued for. */
const RESOURCE = process.env.OIDC_RESOURCE || 'https://api.portcullis.test';

/**
 * The test clients. `alg` is the JWS algorithm of their access tokens; `roles` is a custom
 * claim so tests can exercise authorization rules.
 */
const CLIENTS = {
  'rs256-client': { secret: 'rs256-secret', alg: 'RS256', roles: ['API.Read'] },
  'es256-client': { secret: 'es256-secret', alg: 'ES256', roles: ['API.Read', 'API.Write'] },
};

/** Fresh signing keys: one RSA-2048 (RS256) and one P-256 (ES256), as private JWKs. */
function generateKeys() {
  const generation = randomUUID().slice(0, 8);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${generation}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `ec-${generation}`, alg: 'ES256', use: 'sig' },
  ];
}

function buildProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    jwks: { keys },
    clients: Object.entries(CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        // The signing algorithm is chosen per client here: oidc-provider picks the access
        // token's key from `jwt.sign.alg` of the resource server the token is for.
        getResourceServerInfo: async (_ctx, resource, client) => {
          if (resource !== RESOURCE) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: 'api:read api:write',
            audience: RESOURCE,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: CLIENTS[client.clientId]?.alg ?? 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const roles = CLIENTS[token.clientId]?.roles;
      return roles ? { roles } : undefined;
    },
  });
  // Without this, oidc-provider logs every refused request (tests make many on purpose).
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return provider;
}

/** A JSON answer with a Content-Length (not chunked): the tests' HTTP client is minimal. */
function json(res, value) {
  const body = JSON.stringify(value);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** A private JWK in the forms a test needs to sign with it or to misuse its public half. */
function keyMaterial(jwk) {
  const { kid, alg, use, ...material } = jwk;
  const privateKey = createPrivateKey({ key: material, format: 'jwk' });
  const publicKey = createPublicKey(privateKey);
  const out = {
    jwk,
    pkcs8: privateKey.export({ type: 'pkcs8', format: 'der' }).toString('hex'),
    spki_pem: publicKey.export({ type: 'spki', format: 'pem' }),
    spki_der: publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),
  };
  if (material.kty === 'RSA') {
    out.pkcs1_pem = publicKey.export({ type: 'pkcs1', format: 'pem' });
  }
  return out;
}

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
let keys = generateKeys();
let handler = null;
let jwksRequests = 0;
let tokenRequests = 0;

const server = http.createServer((req, res) => {
  const path = (req.url ?? '').split('?')[0];
  if (req.method === 'GET' && path === '/test/keys') {
    json(res, { keys: keys.map(keyMaterial) });
    return;
  }
  if (req.method === 'GET' && path === '/test/jwks-count') {
    json(res, { count: jwksRequests });
    return;
  }
  if (req.method === 'GET' && path === '/test/token-count') {
    json(res, { count: tokenRequests });
    return;
  }
  if (path === '/jwks') {
    jwksRequests += 1;
  }
  if (req.method === 'POST' && path === '/token') {
    tokenRequests += 1;
  }
  if (req.method === 'POST' && req.url === '/test/rotate') {
    // New keys first: oidc-provider signs with the first key that fits the algorithm.
    const fresh = generateKeys();
    keys = [...fresh, ...keys.slice(0, 2)];
    handler = buildProvider(issuer, keys).callback();
    json(res, { kids: fresh.map((k) => k.kid) });
    return;
  }
  handler(req, res);
});

let issuer;
server.listen(port, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  handler = buildProvider(issuer, keys).callback();
  process.stdout.write(`READY ${issuer}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
