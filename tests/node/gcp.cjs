// google-auth-library, unmodified: detects the metadata server, gets an access token (checked by
// the emulator's tokeninfo), the project id and the service account, and an ID token for an
// audience it does not URL-encode (protocols.md 3.3), verified against the emulator's certs.
const crypto = require("node:crypto");
const { GoogleAuth, OAuth2Client } = require("google-auth-library");

async function main() {
  const emulator = process.env.KEYLESS_DEV_EMULATOR_URL;
  const auth = new GoogleAuth({ scopes: ["https://www.googleapis.com/auth/cloud-platform"] });
  const client = await auth.getClient();
  const { token } = await client.getAccessToken();
  const tokeninfo = await fetch(`${emulator}/tokeninfo?access_token=${encodeURIComponent(token)}`);
  const project = await auth.getProjectId();
  const { client_email: email } = await auth.getCredentials();

  const audience = process.argv[2];
  const idClient = await auth.getIdTokenClient(audience);
  const idToken = await idClient.idTokenProvider.fetchIdToken(audience);
  const jwks = await (await fetch(`${emulator}/oauth2/v3/certs`)).json();
  const certs = Object.fromEntries(
    jwks.keys.map((jwk) => [jwk.kid, crypto.createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "pem" })]),
  );
  const ticket = await new OAuth2Client().verifySignedJwtWithCertsAsync(idToken, certs, audience);
  const claims = ticket.getPayload();

  console.log(
    JSON.stringify({
      client: client.constructor.name,
      tokeninfo: tokeninfo.status,
      tokeninfo_email: (await tokeninfo.json()).email,
      project,
      email,
      id_token_aud: claims.aud,
      id_token_email: claims.email,
    }),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
