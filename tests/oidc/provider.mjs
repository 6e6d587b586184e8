// A real OpenID provider for Gatehouse's single sign-on tests:
// oidc-provider (OpenID Certified; the version pinned in package.json,
// installed by scripts/deps.sh into target/oidc) with the device
// authorization grant, refresh tokens and the authorization code flow,
// plus sign-in and consent pages that check a password against an
// account file the test writes (and edits: a user removed from it no
// longer exists for the provider, so their refresh tokens stop working).
//
// Usage: node tests/oidc/provider.mjs CONFIG.json
// CONFIG: {
//   "modules": "target/oidc",               where node_modules is
//   "port": 0,                              0: any free port (the issuer line says which)
//   "accounts": "/tmp/x/accounts.json",     { "alice": { "password", "email",
//                                             "email_verified", "groups": [..] } }
//   "clients": [ oidc-provider client metadata ],
//   "clock_skew_seconds": 0,                the provider's clock against the
//                                             real one (tokens issued in the past)
//   "id_token_ttl": 300,
//   "client_mixup": { "from": "gatehouse", "to": "other", "secret": "..." }
//                                           a provider that confuses two clients:
//                                             requests authenticated as `from`
//                                             are served as `to`
// }
// Prints "listening ISSUER" once it accepts requests.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));

if (cfg.clock_skew_seconds) {
  const realNow = Date.now;
  Date.now = () => realNow() + cfg.clock_skew_seconds * 1000;
}

const { default: Provider } = await import(
  pathToFileURL(join(cfg.modules, 'node_modules/oidc-provider/lib/index.js')).href
);

// The port is bound before the provider exists (its issuer names the
// port): with "port": 0 the system picks a free one, so two providers
// started at once never race for the same port.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(cfg.port || 0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

function accounts() {
  try {
    return JSON.parse(readFileSync(cfg.accounts, 'utf8'));
  } catch (e) {
    console.error(`cannot read ${cfg.accounts}: ${e}`);
    return {};
  }
}

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${randomUUID()}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${randomUUID()}`, use: 'sig', alg: 'ES256' },
  ];
}

const provider = new Provider(issuer, {
  clients: cfg.clients,
  jwks: { keys: signingKeys() },
  async findAccount(ctx, id) {
    const account = accounts()[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: account.sub || id,
          preferred_username: account.username || id,
          name: account.name || id,
          email: account.email,
          email_verified: account.email_verified !== false,
          groups: account.groups || [],
        };
      },
    };
  },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  // Scope claims in the ID token itself, as most enterprise providers do.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    IdToken: cfg.id_token_ttl || 300,
    AccessToken: 600,
    DeviceCode: 600,
    Interaction: 3600,
    Grant: 86400,
    Session: 86400,
    RefreshToken: 86400,
  },
  rotateRefreshToken: true,
  cookies: { keys: ['gatehouse-test-cookies'] },
  async renderError(ctx, out, error) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>Error</title><h1>${escape(out.error)}</h1><p id="error">${escape(out.error_description || '')}</p>`;
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description || ''));

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function form(ctx) {
  const chunks = [];
  for await (const c of ctx.req) chunks.push(c);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;
}

function loginPage(uid, error) {
  return page('Sign in', `${error ? `<p id="error">${escape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${uid}/login">
  <input type="text" name="username" autofocus>
  <input type="password" name="password">
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(uid, client, scopes) {
  return page('Allow access', `<p>${escape(client)} asks for: ${escape(scopes.join(' '))}</p>
<form id="consent" method="post" action="/interaction/${uid}/confirm">
  <button type="submit">Allow</button>
</form>
<form id="deny" method="post" action="/interaction/${uid}/abort"><button type="submit">Deny</button></form>`);
}

// A provider that confuses two clients: what `from` asks is served as `to`.
function mixup(ctx) {
  const m = cfg.client_mixup;
  const auth = ctx.get('authorization');
  if (!m || !auth.startsWith('Basic ')) return;
  const [id] = Buffer.from(auth.slice(6), 'base64').toString('utf8').split(':');
  if (decodeURIComponent(id) === m.from) {
    const basic = Buffer.from(`${encodeURIComponent(m.to)}:${encodeURIComponent(m.secret)}`).toString('base64');
    ctx.req.headers.authorization = `Basic ${basic}`;
  }
}

provider.use(async (ctx, next) => {
  mixup(ctx);
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/(login|confirm|abort))?$/);
  if (!m) return next();
  const [, uid, , action] = m;
  ctx.set('cache-control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    ctx.body = details.prompt.name === 'login'
      ? loginPage(uid)
      : consentPage(uid, details.params.client_id, [...new Set(String(details.params.scope || '').split(' '))]);
    return undefined;
  }
  if (ctx.method !== 'POST') return next();
  if (action === 'login') {
    const f = await form(ctx);
    const username = f.get('username') || '';
    const account = accounts()[username];
    if (!account || account.password !== f.get('password')) {
      ctx.type = 'html';
      ctx.body = loginPage(uid, 'Invalid username or password');
      return undefined;
    }
    return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    const { prompt: { details: missing }, params, session } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return provider.interactionFinished(ctx.req, ctx.res, {
    error: 'access_denied',
    error_description: 'End-User aborted interaction',
  }, { mergeWithLastSubmission: false });
});

server.on('request', provider.callback());
console.log(`listening ${issuer}`);
