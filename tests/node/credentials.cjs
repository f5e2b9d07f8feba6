// The three clouds' default credentials in one program, unmodified, as a program `keyless exec`
// runs gets them: the AWS SDK for JavaScript v3's default chain (fromNodeProviderChain),
// google-auth-library's application-default credentials, @azure/identity's DefaultAzureCredential.
// Prints each cloud's credential as JSON ("error: ..." for a cloud that failed); the test proves
// whose it is with the emulator (GetCallerIdentity, tokeninfo, the Entra token's appid).
const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const { GoogleAuth } = require("google-auth-library");
const { DefaultAzureCredential } = require("@azure/identity");

async function attempt(get) {
  try {
    return await get();
  } catch (e) {
    return `error: ${String((e && e.message) || e).slice(0, 300)}`;
  }
}

async function main() {
  const aws = await attempt(async () => {
    const keys = await fromNodeProviderChain()();
    return { access_key_id: keys.accessKeyId, secret_access_key: keys.secretAccessKey, session_token: keys.sessionToken ?? "" };
  });
  const gcp = await attempt(async () => {
    const auth = new GoogleAuth({ scopes: ["https://www.googleapis.com/auth/cloud-platform"] });
    const { token } = await (await auth.getClient()).getAccessToken();
    return token;
  });
  const azure = await attempt(
    async () => (await new DefaultAzureCredential().getToken("https://management.azure.com/.default")).token,
  );
  console.log(JSON.stringify({ aws, gcp, azure }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
