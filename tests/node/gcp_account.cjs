// google-auth-library, unmodified: the `Compute` client for one service account picked by e-mail
// (argv[2]), as apps select among the accounts of a GCE VM; its access token checked by the
// emulator's tokeninfo.
const { Compute } = require("google-auth-library");

async function main() {
  const email = process.argv[2];
  const client = new Compute({ serviceAccountEmail: email });
  const { token } = await client.getAccessToken();
  const info = await fetch(`${process.env.KEYLESS_DEV_EMULATOR_URL}/tokeninfo?access_token=${encodeURIComponent(token)}`);
  console.log(JSON.stringify({ tokeninfo: info.status, tokeninfo_email: (await info.json()).email }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
