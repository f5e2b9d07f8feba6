// @azure/identity (msal-node), unmodified: ManagedIdentityCredential or DefaultAzureCredential,
// on App Service (IDENTITY_ENDPOINT + IDENTITY_HEADER) or IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST),
// whichever the environment offers. Prints the token's claims (not the token).
const { ManagedIdentityCredential, DefaultAzureCredential } = require("@azure/identity");

async function main() {
  const [which, scope] = process.argv.slice(2);
  const credential = which === "default" ? new DefaultAzureCredential() : new ManagedIdentityCredential();
  const token = await credential.getToken(scope);
  const claims = JSON.parse(Buffer.from(token.token.split(".")[1], "base64url").toString());
  console.log(JSON.stringify({ aud: claims.aud, appid: claims.appid, left_s: Math.round((token.expiresOnTimestamp - Date.now()) / 1000) }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
