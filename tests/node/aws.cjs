// AWS SDK for JavaScript v3, unmodified: the default credential chain (container endpoint when
// AWS_CONTAINER_CREDENTIALS_FULL_URI is set, else IMDSv2), then GetCallerIdentity against the
// emulator, which verifies the SigV4 signature made with the served credentials.
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

async function main() {
  const sts = new STSClient({});
  const who = await sts.send(new GetCallerIdentityCommand({}));
  const credentials = await sts.config.credentials();
  console.log(JSON.stringify({ arn: who.Arn, expiration: credentials.expiration.toISOString().replace(/\.\d+Z$/, "Z") }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
